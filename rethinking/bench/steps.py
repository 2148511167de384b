"""Train and eval steps per model: the real CIFAR and ImageNet paths, fused steps, the bare
step, XLA's FLOPs per step against the matmul peak, and eager PyTorch's step beside them.

Per model (`tasks.parse_model`'s `name[@size][/batch]`):
  compile s    time to the first train step: trace, XLA compile and one step
  train img/s  the real path at steady state. CIFAR: `train.InMemoryTask.train`, one step
               per call: the dataset on the device, the batch gathered (and augmented)
               there, the state and the running metric sums donated. Inception V3: the
               ImageNet path, `parallel.pmapped_steps` on uint8 batches on the device
  fused img/s  the same with k steps in one call (`steps_per_dispatch`)
  step img/s   `step.train_step` alone, jitted with the state donated, on one fixed
               preprocessed batch: the model's cost without the input
  eval img/s   `task.evaluate` (CIFAR; the test set) or the pmapped eval step
  GFLOP/step   XLA's cost analysis of the train step; GFLOP/s is that over the train step
               time, %peak against the matmul peak timed in the same run
  torch        eager PyTorch's step of the same model (`rethinking.torch_reference`, in a
               subprocess), or issue 7's reference figures
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import subprocess
import time
from typing import Any, Callable

import numpy as np

from rethinking.bench import tasks
from rethinking.bench import timing
from rethinking.bench.timing import Budget

# Issue 7: eager PyTorch 2.13 on this 2-core CPU, batch 128, SGD with momentum.
TORCH_IMAGES_PER_S = {"mlp_1x512": 21_400, "mlp_3x512": 12_300, "alexnet_small": 415,
                      "inception_small": 66}


def bench_cifar_model(name: str, batch_size: int, tmp: pathlib.Path, budget: Budget, *,
                      fused_steps: int = 0, bare_step: bool = False, evaluate: bool = True,
                      torch_python: str = "", **config_overrides) -> dict[str, Any]:
  """The real CIFAR path (InMemoryTask), and optionally fused steps (`fused_steps` > 1),
  the bare train step, evaluation and PyTorch's step, of one model.

  `config_overrides` set config fields (e.g. half_precision) on the paper's recipe.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rethinking import loop  # pylint: disable=g-import-not-at-top
  from rethinking import step as step_lib  # pylint: disable=g-import-not-at-top
  from rethinking.data import preprocess  # pylint: disable=g-import-not-at-top

  num_train, num_test = max(4 * batch_size, 256), 500
  npz = tmp / f"synthetic_{num_train}.npz"
  if not npz.exists():
    tasks.synthetic_npz(npz, num_train, num_test)
  config, task = tasks.in_memory_task(
      name, str(npz), batch_size=batch_size, eval_batch_size=num_test, eval_train=False,
      **config_overrides)
  out: dict[str, Any] = {"model": name, "image_size": config.image_size,
                         "batch_size": batch_size, "path": "train.InMemoryTask.train",
                         "half_precision": bool(config.half_precision)}
  state = task.init_state()
  out["num_params"] = task.run_info["num_params"]
  holder = {"state": state, "sums": loop.train_sums()}
  # As loop.run: state and running sums donated; step 0's batches.
  train = lambda n: timing.carrying(task.train, holder, 0, n)

  t = time.perf_counter()
  timing.block(train(1)())
  first = time.perf_counter() - t
  step_timing = timing.time_budget(train(1), budget)
  out["compile_s"] = max(first - step_timing.median, 0.0)
  out["train"] = step_timing.row(batch_size)
  if torch_python and name in TORCH_IMAGES_PER_S and batch_size == 128:
    out["torch_measured"] = timing.guarded(lambda: torch_reference(name, tmp, budget, torch_python))
  k = fused_steps
  if k > 1:
    fused = timing.time_budget(train(k), budget, steps=max(2, budget.steps // k), warmup=1)
    out["train_fused"] = dict(fused.row(batch_size * k, k), steps_per_call=k)

  # The bare step on a fixed preprocessed batch: the model without its input.
  rng = np.random.default_rng(1)
  images = preprocess.preprocess(jnp.asarray(rng.integers(
      0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)), image_size=config.image_size)
  batch = {"image": images, "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}
  key = jax.random.PRNGKey(0)
  lowered = jax.jit(step_lib.train_step, donate_argnums=0).lower(holder["state"], batch, key)
  if not bare_step:  # XLA's count before optimization: no second compile.
    out["flops_per_step"], out["flops_source"] = timing.flops(lowered), "lowered step.train_step"
  else:
    t = time.perf_counter()
    step = lowered.compile()
    out["step_compile_s"] = time.perf_counter() - t
    out["flops_per_step"], out["flops_source"] = timing.flops(step), "compiled step.train_step"

    def bare():
      holder["state"], sums = step(holder["state"], batch, key)
      return sums

    out["step"] = timing.time_budget(bare, budget).row(batch_size)
    if out["step"]["step_ms"] < 50:  # Fast steps, where the input's share can matter.
      out["input_share"] = input_share(train(1), bare, out["step"]["step_ms"])

  if evaluate:
    task.evaluate(holder["state"])  # Compiles.
    ev = timing.time_calls(lambda: task.evaluate(holder["state"]), max(2, budget.steps // 3),
                           0, budget.max_seconds)
    out["eval"] = dict(ev.row(num_test), batch_size=config.eval_batch_size)
  return out


def input_share(real: Callable[[], Any], bare: Callable[[], Any], step_ms: float,
                rounds: int = 8) -> dict[str, Any]:
  """What the input pipeline adds to a train step: the real step (gather, augment)
  against the bare one on a fixed batch, interleaved round by round; the fastest
  round of each (on a shared CPU rounds vary by ~15%, more than the difference, and
  noise only adds time; the medians are recorded too)."""
  per_round = max(10, math.ceil(250 / step_ms))
  times: dict[str, list[float]] = {"real": [], "bare": []}
  for _ in range(rounds):
    for key, call in (("real", real), ("bare", bare)):
      t = time.perf_counter()
      for _ in range(per_round):
        result = call()
      timing.block(result)
      times[key].append((time.perf_counter() - t) / per_round)
  real_s, bare_s = min(times["real"]), min(times["bare"])
  return {"fraction": real_s / bare_s - 1, "real_step_ms": 1e3 * real_s,
          "bare_step_ms": 1e3 * bare_s, "median_fraction": float(
              np.median(times["real"]) / np.median(times["bare"]) - 1),
          "steps_per_round": per_round, "rounds_s": times}


def shard(x: np.ndarray, devices) -> Any:
  """[num_devices, ...] host array -> one shard per device, as pmap takes it."""
  import jax  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  spec = jax.sharding.PartitionSpec("d")
  return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))


@functools.lru_cache(maxsize=None)
def _initial_variables(name: str, size: int) -> dict[str, Any]:
  """Host copies of `name`'s initial variables (1,000 classes): the train step donates
  the device buffers of each state made from them."""
  import jax  # pylint: disable=g-import-not-at-top
  from rethinking import step as step_lib  # pylint: disable=g-import-not-at-top
  from rethinking.models import get_model  # pylint: disable=g-import-not-at-top

  return jax.device_get(step_lib.init_variables(
      jax.random.PRNGKey(0), get_model(name, num_classes=1000), (size, size, 3)))


def bench_imagenet_model(name: str, size: int, batch_size: int, budget: Budget,
                         dtype: str = "float32") -> dict[str, Any]:
  """The ImageNet path: the pmapped train and eval steps on uint8 batches on the device,
  computing in `dtype` (float32, or bfloat16 with float32 parameters)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rethinking import loop  # pylint: disable=g-import-not-at-top
  from rethinking import optim  # pylint: disable=g-import-not-at-top
  from rethinking import parallel  # pylint: disable=g-import-not-at-top
  from rethinking import step as step_lib  # pylint: disable=g-import-not-at-top
  from rethinking.models import get_model  # pylint: disable=g-import-not-at-top

  devices = jax.local_device_count()
  batch_size = max(batch_size // devices, 1) * devices
  per_device = batch_size // devices
  compute = jnp.dtype(dtype)
  model = get_model(name, num_classes=1000, axis_name=parallel.AXIS, dtype=compute)
  tx = optim.make_optimizer(optim.learning_rate_schedule(0.045, 0.94, 1000), 0.9, 4e-5)
  # Made once per model: Inception V3's variables do not depend on the image size
  # (global average pooling), and its init compiles for ~25 s on this CPU (XLA
  # compiling ~100 threefry draws), as long as its train step takes.
  variables = _initial_variables(name, 75 if name == "inception_v3" else size)
  state = step_lib.create_train_state(None, model, (size, size, 3), tx, variables=variables)
  out: dict[str, Any] = {"model": name, "image_size": size, "batch_size": batch_size,
                         "devices": devices, "path": "parallel.pmapped_steps",
                         "dtype": compute.name,
                         "num_params": int(sum(p.size for p in jax.tree_util.tree_leaves(
                             state.params)))}
  rng = np.random.default_rng(0)
  put = functools.partial(shard, devices=jax.local_devices())
  batch = {"image": put(rng.integers(0, 256, (devices, per_device, size, size, 3),
                                     dtype=np.uint8)),
           "label": put(rng.integers(0, 1000, (devices, per_device)).astype(np.int32))}
  train, evaluate = parallel.pmapped_steps(compute)
  key = jax.random.PRNGKey(1)
  # XLA's count on the lowered (per-device) step: compiling it apart from pmap's own
  # cache would cost a second compile of the largest model.
  state, sums = parallel.replicated((state, loop.train_sums()))
  count = timing.flops(train.lower(state, sums, batch, key))
  out["flops_per_step"] = count * devices if count else None
  out["flops_source"] = "lowered (pre-optimization) HLO, per device x devices"
  holder = {"state": state, "sums": sums}
  call = timing.carrying(train, holder, batch, key)
  t = time.perf_counter()
  timing.block(call())
  first = time.perf_counter() - t
  step_timing = timing.time_budget(call, budget, warmup=min(budget.warmup, 1))
  out["compile_s"] = max(first - step_timing.median, 0.0)
  out["train"] = step_timing.row(batch_size)
  eval_batch = dict(batch, mask=put(np.ones((devices, per_device), np.float32)))
  eval_sums = {"sums": parallel.replicated(loop.zero_sums())}

  def eval_call():
    eval_sums["sums"] = evaluate(holder["state"], eval_sums["sums"], eval_batch)
    return eval_sums["sums"]

  timing.block(eval_call())
  ev = timing.time_calls(eval_call, budget.steps, 0, budget.max_seconds / 2)
  out["eval"] = dict(ev.row(batch_size), batch_size=batch_size)
  return out


def derived(row: dict[str, Any], peak_gflops: float) -> None:
  """Adds the achieved GFLOP/s, its share of the peak, and the ratio to PyTorch's step."""
  flops, step_ms = row.get("flops_per_step"), row["train"]["step_ms"]
  if flops:
    row["achieved_gflops"] = flops / (step_ms / 1e3) / 1e9
    row["peak_fraction"] = row["achieved_gflops"] / peak_gflops
  torch = TORCH_IMAGES_PER_S.get(row["model"]) if row["image_size"] == 28 else None
  if torch and row["batch_size"] == 128:
    row["torch_reference_images_per_s"] = torch
    measured = (row.get("torch_measured") or {}).get("images_per_s")
    row["torch_images_per_s"] = measured or torch
    row["torch_source"] = "measured in this run" if measured else "issue 7 reference"
    row["vs_torch"] = row["train"]["images_per_s"] / row["torch_images_per_s"]


def torch_reference(name: str, tmp: pathlib.Path, budget: Budget,
                    torch_python: str) -> dict[str, Any]:
  """Eager PyTorch's step of `name` on this machine (rethinking.torch_reference, run by
  `torch_python` in a subprocess: torch and jax need not share an environment)."""
  out = tmp / f"torch_{name}.json"
  proc = subprocess.run(
      [torch_python, "-m", "rethinking.torch_reference", f"--models={name}",
       f"--steps={budget.steps}", f"--min-seconds={budget.min_seconds}",
       f"--max-seconds={budget.max_seconds}", f"--json={out}"],
      cwd=tasks.REPO, capture_output=True, text=True, timeout=600, check=False)
  if proc.returncode:
    raise RuntimeError(f"{torch_python} -m rethinking.torch_reference failed: "
                       f"{proc.stderr[-500:]}")
  result = json.loads(out.read_text())
  return dict(result["results"][0], torch=result["torch"], threads=result["threads"])

