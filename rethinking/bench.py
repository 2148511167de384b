r"""Speed, measured: train and eval steps, input pipelines, a real epoch, several devices.

  python -m rethinking.bench --json=/tmp/bench.json          # everything: ~8 min on 2 CPU cores
  python -m rethinking.bench --models=mlp_1x512,alexnet_small --steps=20
  python -m rethinking.bench --quick --json=/tmp/quick.json  # minutes: mlp_1x512, every section
  python -m rethinking.bench --torch_python=/path/to/torch-env/bin/python  # PyTorch measured too

Models are `name[@size][/batch]`: the CIFAR models at 28x28 (the paper's crop), batch
128, and Inception V3 at 299x299 (batch 8) and at 75x75 (its smallest input, batch 32:
CPU-sized steps). Per model:

  compile s    time to the first train step: trace, XLA compile and one step (the
               persistent compilation cache is off here, so this is a cold compile)
  train img/s  the real path at steady state. CIFAR: `train.InMemoryTask.train`, one
               step per call as in the default config: the dataset on the device
               (prepared once there), the batch gathered (and augmented) there, the
               state and the running metric sums donated. Inception V3: the ImageNet
               path, `parallel.pmapped_steps` on uint8 batches already on the device.
               Median over timed calls after warm-up (at least --steps calls and
               --min_seconds), each synchronized with `block_until_ready`
  fused img/s  the same with `--fused_steps` steps in one call (`steps_per_dispatch`);
               MLPs only on a CPU (see --fused_models)
  step img/s   `step.train_step` alone, jitted with the state donated, on one fixed
               preprocessed batch: the model's cost without the input (--step_models)
  eval img/s   `task.evaluate` (CIFAR; the test set) or the pmapped eval step
  GFLOP/step   XLA's cost analysis of the train step (compiled, or lowered where it
               is not compiled separately); GFLOP/s is that over the train step time,
               %peak against a 2048^3 float32 matmul timed in the same run
  torch        eager PyTorch 2.13's step, batch 128, SGD with momentum: measured right
               after the model's own train timing with --torch_python (the same
               models, `rethinking.torch_reference`), else issue 7's reference
               figures from an idle 2-core CPU (other machines differ)

Then: the CIFAR input pipeline alone (`train.train_batch` per augmentation, and its
share of each model's step), the ImageNet tf.data pipeline on
generated JPEG files, a real training epoch (`loop.run` on a subset of the CIFAR-10
file, evaluation excluded) against steps x step time, and the pmapped step on 1..N
fake CPU devices (`--xla_force_host_platform_device_count`, one subprocess each; on a
CPU this checks the code path, not speed: the devices share the same cores).

The XLA flags in effect, the load average before and after and the share of CPU time
the hypervisor stole are recorded: on a shared machine, rerun when it is idle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import io
import json
import math
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app
from absl import flags
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO.parent / "shared" / "data" / "cifar10_10k.npz"
CIFAR_MODELS = ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small",
                "inception_small_nobn")
DEFAULT_MODELS = CIFAR_MODELS + ("inception_v3@299/8", "inception_v3@75/32")
# Issue 7: eager PyTorch 2.13 on this 2-core CPU, batch 128, SGD with momentum.
TORCH_IMAGES_PER_S = {"mlp_1x512": 21_400, "mlp_3x512": 12_300, "alexnet_small": 415,
                      "inception_small": 66}

FLAGS = flags.FLAGS
flags.DEFINE_list("models", list(DEFAULT_MODELS),
                  "Models: name[@image_size][/batch] (default size 28, or 299 for "
                  "inception_v3; default batch --batch_size).")
flags.DEFINE_integer("batch_size", 128, "Train batch where a model spec gives none.")
flags.DEFINE_integer("steps", 10, "Timed steps per measurement (at most; see --max_seconds).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after the first (compiling) one.")
flags.DEFINE_float("min_seconds", 2.0,
                   "Time train steps for at least this long (fast steps on a shared CPU vary "
                   "by ~30% over seconds: a median over many is steadier than over --steps).")
flags.DEFINE_string("torch_python", "",
                    "A python with torch 2.13: measure eager PyTorch's step "
                    "(rethinking.torch_reference) right after each CIFAR model's, on this "
                    "machine, instead of quoting issue 7's reference figures.")
flags.DEFINE_float("max_seconds", 15.0,
                   "Stop timing a measurement after this long (at least 3 timed steps).")
flags.DEFINE_integer("fused_steps", 8, "Steps per call for the fused (steps_per_dispatch) figure.")
flags.DEFINE_list("fused_models", ["mlp_1x512", "mlp_3x512"],
                  "Models timed with fused steps. Not the conv nets on a CPU: XLA's CPU "
                  "backend leaves the gradient convolutions inside a loop in their "
                  "non-canonical form, run by a naive loop ~20-60x slower (see "
                  "train.train_steps); on accelerators list them all.")
flags.DEFINE_list("step_models", ["mlp_1x512", "mlp_3x512", "alexnet_small"],
                  "Models whose bare train step is timed too (a second compile; for the "
                  "conv nets the input is <1% of the step, so it adds little).")
flags.DEFINE_list("epoch_models", ["mlp_1x512", "alexnet_small"],
                    "Models for the real-epoch overhead check ('' to skip).")
flags.DEFINE_integer("epoch_images", 0,
                     "Training images of the real epoch (0: --epoch_seconds of steps).")
flags.DEFINE_float("epoch_seconds", 8.0,
                   "Size the real epoch for about this many seconds of steps (at most "
                   "CIFAR-10's 50,000 images): the per-epoch costs (a checkpoint, ~0.13 s "
                   "of CPU) weigh on a short epoch as they would not on a real one.")
flags.DEFINE_string("cifar_data", str(CIFAR_NPZ),
                    "The CIFAR-10 .npz of the real-epoch check (synthetic images where it "
                    "is absent or holds fewer than the epoch needs).")
flags.DEFINE_integer("devices", 4, "Fake CPU devices for the scaling check (0 to skip).")
flags.DEFINE_string("scaling_model", "mlp_1x512", "Model of the scaling check.")
flags.DEFINE_bool("imagenet_pipeline", True, "Time the ImageNet tf.data path on generated JPEGs.")
flags.DEFINE_integer("accelerator_images_per_s", 2000,
                     "An accelerator's Inception V3 training rate (img/s; an assumption, e.g. a "
                     "recent GPU in bfloat16): the ImageNet input's CPU cores needed per N of them.")
flags.DEFINE_bool("quick", False, "A run of minutes: mlp_1x512, batch 16, every section tiny.")
flags.DEFINE_string("json", None, "Write the results here as JSON.")
flags.DEFINE_bool("compilation_cache", False,
                  "Keep JAX's persistent compilation cache as configured (e.g. by "
                  "JAX_COMPILATION_CACHE_DIR); off by default so compile times are cold.")
flags.DEFINE_integer("scaling_worker", 0, "Internal: time the pmapped step on this many "
                     "devices and print JSON (run in a subprocess).")


# ---------------------------------------------------------------------------------------
# Timing.


def _block(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(tree)


@dataclasses.dataclass
class Timing:
  """Seconds per call: median (the figure reported), min, and how many were timed."""

  median: float
  min: float
  n: int

  def row(self, images_per_call: int, steps_per_call: int = 1) -> dict[str, float]:
    return {"step_ms": 1e3 * self.median / steps_per_call,
            "images_per_s": images_per_call / self.median, "min_step_ms":
            1e3 * self.min / steps_per_call, "timed_calls": self.n}


def time_calls(call: Callable[[], Any], steps: int, warmup: int, max_seconds: float,
               min_seconds: float = 0.0) -> Timing:
  """Times `call()` (which must return something to block on) after `warmup` calls:
  at least `steps` calls and `min_seconds`, at most `max_seconds` (once 3 are timed)."""
  for _ in range(warmup):
    _block(call())
  times, start = [], time.perf_counter()
  while len(times) < max(steps, 1) or time.perf_counter() - start < min_seconds:
    t = time.perf_counter()
    _block(call())
    times.append(time.perf_counter() - t)
    if len(times) >= min(3, steps) and time.perf_counter() - start > max_seconds:
      break
  return Timing(float(np.median(times)), float(np.min(times)), len(times))


def _carrying(fn: Callable[..., Any], holder: dict[str, Any], *args) -> Callable[[], Any]:
  """A no-argument call of fn(state, sums, *args) -> (state, sums), as the training
  loop makes it: both donated, so `holder` keeps the current ones; returns the sums
  (to block on)."""
  def call():
    holder["state"], holder["sums"] = fn(holder["state"], holder["sums"], *args)
    return holder["sums"]
  return call


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per computation.
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def matmul_peak(n: int = 2048, steps: int = 10) -> dict[str, float]:
  """Float32 GFLOP/s of an n^3 matmul: the practical peak of this device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((n, n)), jnp.float32) for _ in range(2))
  f = jax.jit(jnp.dot)
  t = time_calls(lambda: f(a, b), steps, 2, 30.0)
  return {"n": n, "median_s": t.median, "gflops": 2 * n**3 / t.median / 1e9,
          "gflops_best": 2 * n**3 / t.min / 1e9}


# ---------------------------------------------------------------------------------------
# Models.


def parse_model(spec: str, batch_size: int = 128) -> tuple[str, int, int]:
  """'alexnet_small' -> (alexnet_small, 28, batch_size); 'inception_v3@75/32' -> (.., 75, 32)."""
  spec, _, batch = spec.partition("/")
  name, _, size = spec.partition("@")
  from rethinking.models import MODELS  # pylint: disable=g-import-not-at-top
  if name not in MODELS:
    raise app.UsageError(f"--models: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  try:
    size = int(size) if size else (299 if name == "inception_v3" else 28)
    batch = int(batch) if batch else batch_size
  except ValueError:
    raise app.UsageError(f"--models={spec}: expected name[@size][/batch]") from None
  if name != "inception_v3" and size != 28:
    raise app.UsageError(f"--models={spec}: the CIFAR models run at 28x28")
  return name, size, batch


def _cifar_config(name: str, **overrides):
  spec = importlib.util.spec_from_file_location("cifar10_config", REPO / "configs" / "cifar10.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"model={name}")
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


def _synthetic_npz(path: pathlib.Path, num_train: int, num_test: int, size: int = 32) -> str:
  rng = np.random.default_rng(0)
  np.savez(path, x_train=rng.integers(0, 256, (num_train, size, size, 3), dtype=np.uint8),
           y_train=np.arange(num_train) % 10, x_test=rng.integers(
               0, 256, (num_test, size, size, 3), dtype=np.uint8),
           y_test=np.arange(num_test) % 10)
  return str(path)


def _in_memory_task(name: str, dataset: str, **overrides):
  from rethinking import train  # pylint: disable=g-import-not-at-top
  config = _cifar_config(name, dataset=dataset, **overrides)
  return config, train.InMemoryTask(config, train.load_data(config))


def bench_cifar_model(name: str, batch_size: int, tmp: pathlib.Path) -> dict[str, Any]:
  """The real CIFAR path (InMemoryTask), the bare train step and evaluation of one model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rethinking import loop  # pylint: disable=g-import-not-at-top
  from rethinking import step as step_lib  # pylint: disable=g-import-not-at-top
  from rethinking.data import preprocess  # pylint: disable=g-import-not-at-top

  num_train, num_test = max(4 * batch_size, 256), 500
  npz = tmp / f"synthetic_{num_train}.npz"
  if not npz.exists():
    _synthetic_npz(npz, num_train, num_test)
  config, task = _in_memory_task(name, str(npz), batch_size=batch_size,
                                 eval_batch_size=num_test, eval_train=False)
  out: dict[str, Any] = {"model": name, "image_size": config.image_size,
                         "batch_size": batch_size, "path": "train.InMemoryTask.train"}
  state = task.init_state()
  out["num_params"] = task.run_info["num_params"]
  holder = {"state": state, "sums": loop.train_sums()}
  # As loop.run: state and running sums donated; step 0's batches.
  train = lambda n: _carrying(task.train, holder, 0, n)

  t = time.perf_counter()
  _block(train(1)())
  first = time.perf_counter() - t
  timing = time_calls(train(1), FLAGS.steps, FLAGS.warmup, FLAGS.max_seconds,
                      FLAGS.min_seconds)
  out["compile_s"] = max(first - timing.median, 0.0)
  out["train"] = timing.row(batch_size)
  if FLAGS.torch_python and name in TORCH_IMAGES_PER_S and batch_size == 128:
    out["torch_measured"] = _guarded(lambda: torch_reference(name, tmp))
  k = FLAGS.fused_steps
  if k > 1 and name in FLAGS.fused_models:
    fused = time_calls(train(k), max(2, FLAGS.steps // k), 1, FLAGS.max_seconds,
                       FLAGS.min_seconds)
    out["train_fused"] = dict(fused.row(batch_size * k, k), steps_per_call=k)

  # The bare step on a fixed preprocessed batch: the model without its input.
  rng = np.random.default_rng(1)
  images = preprocess.preprocess(jnp.asarray(rng.integers(
      0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)), image_size=config.image_size)
  batch = {"image": images, "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}
  key = jax.random.PRNGKey(0)
  lowered = jax.jit(step_lib.train_step, donate_argnums=0).lower(holder["state"], batch, key)
  if name not in FLAGS.step_models:  # XLA's count before optimization: no second compile.
    out["flops_per_step"], out["flops_source"] = _flops(lowered), "lowered step.train_step"
  else:
    t = time.perf_counter()
    step = lowered.compile()
    out["step_compile_s"] = time.perf_counter() - t
    out["flops_per_step"], out["flops_source"] = _flops(step), "compiled step.train_step"

    def bare():
      holder["state"], sums = step(holder["state"], batch, key)
      return sums

    out["step"] = time_calls(bare, FLAGS.steps, FLAGS.warmup, FLAGS.max_seconds,
                             FLAGS.min_seconds).row(batch_size)
    if out["step"]["step_ms"] < 50:  # Fast steps, where the input's share can matter.
      out["input_share"] = _input_share(train(1), bare, out["step"]["step_ms"])

  task.evaluate(holder["state"])  # Compiles.
  ev = time_calls(lambda: task.evaluate(holder["state"]), max(2, FLAGS.steps // 3), 0,
                  FLAGS.max_seconds)
  out["eval"] = dict(ev.row(num_test), batch_size=config.eval_batch_size)
  return out


def _input_share(real: Callable[[], Any], bare: Callable[[], Any], step_ms: float,
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
      _block(result)
      times[key].append((time.perf_counter() - t) / per_round)
  real_s, bare_s = min(times["real"]), min(times["bare"])
  return {"fraction": real_s / bare_s - 1, "real_step_ms": 1e3 * real_s,
          "bare_step_ms": 1e3 * bare_s, "median_fraction": float(
              np.median(times["real"]) / np.median(times["bare"]) - 1),
          "steps_per_round": per_round, "rounds_s": times}


def _shard(x: np.ndarray, devices) -> Any:
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


def bench_imagenet_model(name: str, size: int, batch_size: int) -> dict[str, Any]:
  """The ImageNet path: the pmapped train and eval steps on uint8 batches on the device."""
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
  model = get_model(name, num_classes=1000, axis_name=parallel.AXIS)
  tx = optim.make_optimizer(optim.learning_rate_schedule(0.045, 0.94, 1000), 0.9, 4e-5)
  # Made once per model: Inception V3's variables do not depend on the image size
  # (global average pooling), and its init compiles for ~25 s on this CPU (XLA
  # compiling ~100 threefry draws), as long as its train step takes.
  variables = _initial_variables(name, 75 if name == "inception_v3" else size)
  state = step_lib.create_train_state(None, model, (size, size, 3), tx, variables=variables)
  out: dict[str, Any] = {"model": name, "image_size": size, "batch_size": batch_size,
                         "devices": devices, "path": "parallel.pmapped_steps",
                         "num_params": int(sum(p.size for p in jax.tree_util.tree_leaves(
                             state.params)))}
  rng = np.random.default_rng(0)
  shard = functools.partial(_shard, devices=jax.local_devices())
  batch = {"image": shard(rng.integers(0, 256, (devices, per_device, size, size, 3),
                                       dtype=np.uint8)),
           "label": shard(rng.integers(0, 1000, (devices, per_device)).astype(np.int32))}
  train, evaluate = parallel.pmapped_steps()
  key = jax.random.PRNGKey(1)
  # XLA's count on the lowered (per-device) step: compiling it apart from pmap's own
  # cache would cost a second compile of the largest model.
  state, sums = parallel.replicated((state, loop.train_sums()))
  flops = _flops(train.lower(state, sums, batch, key))
  out["flops_per_step"] = flops * devices if flops else None
  out["flops_source"] = "lowered (pre-optimization) HLO, per device x devices"
  holder = {"state": state, "sums": sums}
  call = _carrying(train, holder, batch, key)
  t = time.perf_counter()
  _block(call())
  first = time.perf_counter() - t
  timing = time_calls(call, FLAGS.steps, min(FLAGS.warmup, 1), FLAGS.max_seconds,
                      FLAGS.min_seconds)
  out["compile_s"] = max(first - timing.median, 0.0)
  out["train"] = timing.row(batch_size)
  eval_batch = dict(batch, mask=shard(np.ones((devices, per_device), np.float32)))
  eval_sums = {"sums": parallel.replicated(loop.zero_sums())}

  def eval_call():
    eval_sums["sums"] = evaluate(holder["state"], eval_sums["sums"], eval_batch)
    return eval_sums["sums"]

  _block(eval_call())
  ev = time_calls(eval_call, FLAGS.steps, 0, FLAGS.max_seconds / 2)
  out["eval"] = dict(ev.row(batch_size), batch_size=batch_size)
  return out


def _derived(row: dict[str, Any], peak_gflops: float) -> None:
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


def torch_reference(name: str, tmp: pathlib.Path) -> dict[str, Any]:
  """Eager PyTorch's step of `name` on this machine (rethinking.torch_reference, run by
  --torch_python in a subprocess: torch and jax need not share an environment)."""
  out = tmp / f"torch_{name}.json"
  proc = subprocess.run(
      [FLAGS.torch_python, "-m", "rethinking.torch_reference", f"--models={name}",
       f"--steps={FLAGS.steps}", f"--min-seconds={FLAGS.min_seconds}",
       f"--max-seconds={FLAGS.max_seconds}", f"--json={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  if proc.returncode:
    raise RuntimeError(f"{FLAGS.torch_python} -m rethinking.torch_reference failed: "
                       f"{proc.stderr[-500:]}")
  result = json.loads(out.read_text())
  return dict(result["results"][0], torch=result["torch"], threads=result["threads"])


# ---------------------------------------------------------------------------------------
# Input pipelines.


def bench_cifar_pipeline(batch_size: int, image_size: int = 28,
                         augments=("none", "crop_flip", "full")) -> dict[str, Any]:
  """The CIFAR input pipeline alone: `train.train_batch` on the device, no model.

  The training path's function and inputs (`prepare_inputs` for augment='none', raw
  uint8 images otherwise); 16 batches per jitted call, unrolled, each returned (as
  it is materialized for the model in the train step). Unrolled, not in a loop:
  XLA's CPU backend runs even a gather ~3x slower inside one; 16 per call, so the
  call's dispatch and synchronization (~0.1 ms here) do not count as pipeline.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rethinking import train  # pylint: disable=g-import-not-at-top
  from rethinking.data import in_memory  # pylint: disable=g-import-not-at-top

  n, per_call = 50_000, 16
  raw = jnp.asarray(np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
  y = jnp.zeros((n,), jnp.int32)
  perm = in_memory.epoch_permutation(jax.random.PRNGKey(0), 0, n)
  key = jax.random.PRNGKey(1)
  out = {"batch_size": batch_size, "dataset_images": n}
  for augment in augments:
    x = (train.prepare_inputs(raw, image_size=image_size, dtype=jnp.float32)
         if augment == "none" else raw)
    batch = functools.partial(
        train.train_batch, batch_size=batch_size,
        steps_per_epoch=in_memory.steps_per_epoch(n, batch_size), image_size=image_size,
        augment=augment, rotation_degrees=25.0, dtype=jnp.float32)
    run = jax.jit(lambda x, perm, start, batch=batch: [
        batch(x, y, perm, start + i, key)["image"] for i in range(per_call)])
    counter = iter(range(0, 10**9, per_call))
    t = time_calls(lambda: run(x, perm, next(counter)), max(FLAGS.steps // 2, 3), 1,
                   FLAGS.max_seconds, FLAGS.min_seconds / 2)
    out[augment] = t.row(batch_size * per_call, per_call)
    del x
  return out


def _write_jpeg_folder(root: pathlib.Path, per_class: int, classes: int = 2,
                       scale: float = 1.0) -> None:
  """An ImageFolder of ImageNet-sized JPEGs (about 500x375 x scale) with smooth random content."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ("train", "validation"):
    for c in range(classes):
      folder = root / split / f"class{c}"
      folder.mkdir(parents=True)
      for i in range(per_class):
        h, w = (int(scale * d) for d in (rng.integers(330, 420), rng.integers(450, 550)))
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        noise = rng.integers(-12, 13, (h, w, 3))
        pixels = np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{c}_{i}.JPEG", quality=90)


def bench_imagenet_pipeline(image_size: int, batch_size: int, num_images: int,
                            tmp: pathlib.Path) -> dict[str, Any]:
  """Images/s of `data.imagenet.ImageNetInput.train_batches` (decode, crop, flip, batch)."""
  try:
    from rethinking.data import imagenet  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {"skipped": f"rethinking.data.imagenet is not importable ({e})"}
  root = tmp / "jpegs"
  if not root.exists():
    _write_jpeg_folder(root, per_class=max(num_images // 2, batch_size),
                       scale=0.25 if FLAGS.quick else 1.0)
  pipeline = imagenet.ImageNetInput(
      str(root), data_dir=None, image_size=image_size, per_device_batch=batch_size,
      eval_per_device_batch=batch_size, augment=True, corruption="none", corrupt_prob=0.0,
      seed=0, process_index=0, process_count=1, local_device_count=1)
  batches, epoch, times = 0, 0, []
  it = iter(pipeline.train_batches(epoch))
  next(it)  # Builds the tf.data graph and fills the prefetch buffer.
  cpu_start = _cpu_seconds()
  start = time.perf_counter()
  while batches < max(FLAGS.steps, 3) and time.perf_counter() - start < FLAGS.max_seconds:
    t = time.perf_counter()
    try:
      next(it)
    except StopIteration:
      epoch += 1
      it = iter(pipeline.train_batches(epoch))
      continue
    times.append(time.perf_counter() - t)
    batches += 1
  elapsed = sum(times)
  # tf.data's threads run in this process: its CPU time over the loop is the input's
  # cost (the prefetched batches it already held when timing started bias this ~1%).
  per_core = batches * batch_size / max(_cpu_seconds() - cpu_start, 1e-9)
  rate = FLAGS.accelerator_images_per_s
  return {"image_size": image_size, "batch_size": batch_size, "files": 2 * len(list(
      (root / "train" / "class0").iterdir())), "batches": batches,
          "images_per_s": batches * batch_size / elapsed, "augment": True,
          "images_per_cpu_core_s": per_core, "accelerator_images_per_s": rate,
          "cores_needed": {str(n): math.ceil(n * rate / per_core) for n in (1, 8)},
          "path": "data.imagenet.ImageNetInput.train_batches (ImageFolder, JPEG)"}


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------
# A real epoch.


class _TimedEvaluation:
  """A Task that times its evaluations, so they can be taken out of the epoch's wall
  time, and runs `between()` after each, inside the time taken out."""

  def __init__(self, task, between: Callable[[], None] | None = None):
    self._task, self._between, self.eval_seconds = task, between, []

  def __getattr__(self, name):
    return getattr(self._task, name)

  def train(self, state, sums, step, num_steps):
    return self._task.train(state, sums, step, num_steps)

  def evaluate(self, state):
    t = time.perf_counter()
    row = self._task.evaluate(state)
    if self._between:
      self._between()
    self.eval_seconds.append(time.perf_counter() - t)
    return row


def bench_epoch(name: str, batch_size: int, num_images: int, data: str,
                tmp: pathlib.Path, epochs: int = 5) -> dict[str, Any]:
  """Epoch wall time of `loop.run` (logging, host syncs, checkpoints) vs steps x step time.

  Epoch e's time is the wall time between the metric rows of epochs e-1 and e minus
  epoch e's evaluation; the first epoch (compilation) is left out. The reference is
  the same number of steps of the same task (the same compiled step, a second
  state) dispatched back to back and synchronized once: the loop's best case, since
  it dispatches asynchronously too. One reference pass runs after each epoch's
  evaluation (its time taken out with it), so each timed epoch runs between two
  passes: a shared CPU's speed drifts by ~10% over tens of seconds, and an epoch
  against the mean of the passes around it cancels the drift. The overhead is the
  median of those ratios; the fastest epoch against the fastest pass, and against
  the blocked per-step median (which includes each call's dispatch), are recorded too.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  from rethinking import loop  # pylint: disable=g-import-not-at-top
  from rethinking import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  synthetic = _num_train_images(data) < num_images
  if synthetic:
    data = _synthetic_npz(tmp / f"epoch_{num_images}.npz", num_images, 100)
  workdir = tmp / f"epoch_{name}"
  config, task = _in_memory_task(name, data, batch_size=batch_size, num_train=num_images,
                                 num_test=100, num_epochs=epochs, eval_train=False,
                                 eval_batch_size=100)
  holder: dict[str, Any] = {}
  passes = []
  call = _carrying(task.train, holder, 0, 1)

  def reference_pass():
    if not holder:
      holder.update(state=task.init_state(), sums=loop.train_sums())
      _block(call())
    t = time.perf_counter()
    for _ in range(task.steps_per_epoch):
      sums = call()
    _block(sums)
    passes.append(time.perf_counter() - t)

  timed = _TimedEvaluation(task, between=reference_pass)
  workdir.mkdir(parents=True)
  loop.prepare_workdir(config, str(workdir))
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    # The progress bar and epoch summaries.
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
      loop.run(config, str(workdir), timed)
  finally:
    logging.set_verbosity(verbosity)
  rows = metrics_lib.read_rows(os.path.join(workdir, "metrics.jsonl"))
  walls = [r["wall_time"] for r in rows]
  epoch_s = [walls[e] - walls[e - 1] - timed.eval_seconds[e] for e in range(1, len(walls))]
  step = time_calls(call, max(FLAGS.steps, 10), 2, FLAGS.max_seconds)
  n = task.steps_per_epoch
  expected, epoch = min(passes), min(epoch_s)
  # Timed epoch i (the loop's epoch i + 2) ran between passes i and i + 1.
  paired = [e / ((passes[i] + passes[i + 1]) / 2) - 1 for i, e in enumerate(epoch_s)]
  return {"model": name, "data": "synthetic" if synthetic else data, "num_train": num_images,
          "batch_size": batch_size, "steps_per_epoch": n,
          "steps_per_dispatch": config.steps_per_dispatch,
          "log_every_steps": config.log_every_steps, "epochs_timed": len(epoch_s),
          "epoch_s": epoch, "epoch_s_all": epoch_s,
          "eval_and_reference_s": timed.eval_seconds[1:],
          "step_ms": 1e3 * step.median, "pipelined_step_ms": 1e3 * expected / n,
          "steps_x_step_s": expected, "steps_x_step_s_all": passes,
          "overhead_fraction": float(np.median(paired)), "overhead_paired_all": paired,
          "overhead_fastest": epoch / expected - 1,
          "overhead_vs_blocked_step": epoch / (n * step.median) - 1}


# ---------------------------------------------------------------------------------------
# Several devices.


def scaling_worker(num_devices: int, name: str, per_device: int) -> dict[str, Any]:
  """In a process with `num_devices` CPU devices: the pmapped step's throughput."""
  import jax  # pylint: disable=g-import-not-at-top
  from rethinking import loop  # pylint: disable=g-import-not-at-top
  from rethinking import optim  # pylint: disable=g-import-not-at-top
  from rethinking import parallel  # pylint: disable=g-import-not-at-top
  from rethinking import step as step_lib  # pylint: disable=g-import-not-at-top
  from rethinking.models import get_model  # pylint: disable=g-import-not-at-top

  assert jax.local_device_count() == num_devices, jax.devices()
  name, size, _ = parse_model(name)
  model = get_model(name, num_classes=10, axis_name=parallel.AXIS)
  tx = optim.make_optimizer(optim.learning_rate_schedule(0.01, 0.95, 100), 0.9, 0.0)
  state = step_lib.create_train_state(jax.random.PRNGKey(0), model, (size, size, 3), tx)
  rng = np.random.default_rng(0)
  batch = {k: _shard(v, jax.local_devices()) for k, v in {
      "image": rng.integers(0, 256, (num_devices, per_device, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, (num_devices, per_device)).astype(np.int32)}.items()}
  train, _ = parallel.pmapped_steps()
  key = jax.random.PRNGKey(1)
  state, sums = parallel.replicated((state, loop.train_sums()))
  call = _carrying(train, {"state": state, "sums": sums}, batch, key)
  _block(call())
  t = time_calls(call, FLAGS.steps, FLAGS.warmup, FLAGS.max_seconds)
  return {"devices": num_devices, **t.row(num_devices * per_device)}


def bench_scaling(max_devices: int, name: str, per_device: int) -> dict[str, Any]:
  """Throughput of the pmapped step on 1..max_devices fake CPU devices (weak scaling)."""
  rows = []
  base = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  for n in range(1, max_devices + 1):
    env = dict(os.environ, XLA_FLAGS=" ".join(
        base + [f"--xla_force_host_platform_device_count={n}"]))
    cmd = [sys.executable, "-m", "rethinking.bench", f"--scaling_worker={n}",
           f"--scaling_model={name}", f"--batch_size={per_device}", f"--steps={FLAGS.steps}",
           f"--warmup={FLAGS.warmup}", f"--max_seconds={FLAGS.max_seconds}",
           f"--compilation_cache={FLAGS.compilation_cache}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
      rows.append({"devices": n, "error": proc.stderr[-2000:]})
      continue
    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  one = rows[0].get("images_per_s")
  for r in rows:
    if one and "images_per_s" in r:
      r["efficiency"] = r["images_per_s"] / (r["devices"] * one)
  return {"model": name, "per_device_batch": per_device, "path": "parallel.pmapped_steps",
          "note": "fake CPU devices share the same cores: this checks the code path, not speed",
          "rows": rows}


# ---------------------------------------------------------------------------------------
# Report.


def _fmt(x, spec=",.0f", missing="-"):
  return missing if x is None else format(x, spec)


def table(results: dict[str, Any]) -> str:
  """The human-readable summary of `results`."""
  lines = []
  env = results["environment"]
  peak = results["matmul_peak"]
  lines.append(f"{env['cpu']} ({env['cpu_count']} CPUs), jax {env['jax']}, "
               f"{env['backend']} x{env['device_count']}; load average "
               f"{env['load_average_start'][0]:.2f} -> {env['load_average_end'][0]:.2f}")
  if "cpu_steal_fraction" in env:
    lines.append(f"CPU over the run: {100 * env['cpu_busy_fraction']:.0f}% busy (2 cores = "
                 f"100%), {100 * env['cpu_steal_fraction']:.1f}% stolen by the hypervisor")
  lines.append(f"XLA_FLAGS={env['xla_flags']!r}")
  lines.append(f"matmul peak (float32 {peak['n']}^3): {peak['gflops']:.1f} GFLOP/s")
  head = (f"{'model':<22}{'batch':>6}{'compile s':>10}{'train img/s':>12}{'fused':>9}"
          f"{'step':>9}{'eval':>9}{'GFLOP/step':>11}{'GFLOP/s':>9}{'%peak':>7}"
          f"{'torch':>8}{'x torch':>8}")
  lines += ["", head, "-" * len(head)]
  for r in results["models"]:
    if "error" in r:
      lines.append(f"{r['model']:<22} error: {r['error'][:90]}")
      continue
    label = f"{r['model']}@{r['image_size']}"
    fused = r.get("train_fused", {}).get("images_per_s")
    flops = r.get("flops_per_step")
    lines.append(
        f"{label:<22}{r['batch_size']:>6}{r['compile_s']:>10.1f}"
        f"{_fmt(r['train']['images_per_s']):>12}{_fmt(fused):>9}"
        f"{_fmt(r.get('step', {}).get('images_per_s')):>9}"
        f"{_fmt(r['eval']['images_per_s']):>9}"
        f"{_fmt(flops and flops / 1e9, ',.2f'):>11}{_fmt(r.get('achieved_gflops'), ',.1f'):>9}"
        f"{_fmt(r.get('peak_fraction') and 100 * r['peak_fraction'], '.0f'):>7}"
        f"{_fmt(r.get('torch_images_per_s')):>8}{_fmt(r.get('vs_torch'), '.2f'):>8}")
  sources = {r["torch_source"] for r in results["models"] if "torch_source" in r}
  if sources:
    lines.append(f"torch: {', '.join(sorted(sources))}" + "".join(
        f"; {r['model']} measured failed: {r['torch_measured']['error'][:80]}"
        for r in results["models"] if "error" in r.get("torch_measured", {})))
  pipe = results.get("input_pipeline", {})
  cifar = pipe.get("cifar")
  if cifar:
    lines.append("")
    lines.append("CIFAR input pipeline on the device (train.train_batch: a gather of "
                 "prepared inputs for none, gather + augment + standardize else), batch "
                 f"{cifar['batch_size']}: " + ", ".join(
                     f"{a} {cifar[a]['images_per_s']:,.0f} img/s ({cifar[a]['step_ms']:.2f} ms/batch)"
                     for a in ("none", "crop_flip", "full") if a in cifar))
    if cifar.get("share_of_step"):
      lines.append("  share of the train step, augment=none (pipeline alone / step; and in "
                   "the step: real vs bare step, interleaved, best of 8 rounds each): " +
                   ", ".join(f"{m} {100 * s:.1f}%" + (
                       f" ({100 * cifar['share_in_step'][m]:+.1f}% in the step)"
                       if m in cifar.get("share_in_step", {}) else "")
                             for m, s in cifar["share_of_step"].items()))
  imnet = pipe.get("imagenet")
  if imnet:
    if "skipped" in imnet:
      lines.append(f"ImageNet tf.data pipeline: skipped ({imnet['skipped']})")
    else:
      lines.append(f"ImageNet tf.data pipeline ({imnet['image_size']}x{imnet['image_size']}, "
                   f"JPEG decode + random crop + flip): {imnet['images_per_s']:,.0f} img/s")
      if "images_per_cpu_core_s" in imnet:
        cores = imnet["cores_needed"]
        lines.append(f"  {imnet['images_per_cpu_core_s']:,.0f} img/s per CPU core: at "
                     f"{imnet['accelerator_images_per_s']:,} img/s per accelerator "
                     f"(--accelerator_images_per_s), 1 needs {cores['1']} cores, 8 need "
                     f"{cores['8']} (per host)")
  if results.get("end_to_end"):
    lines.append("")
    lines.append("Real epoch (loop.run: host syncs per log interval, checkpoint per epoch; "
                 "eval excluded) vs steps x step time (the same steps dispatched back to "
                 "back, a pass between epochs): overhead = median of each epoch against "
                 "the passes around it; fastest of each:")
    for r in results["end_to_end"]:
      if "error" in r:
        lines.append(f"  {r['model']}: error: {r['error'][:100]}")
        continue
      each = ", ".join(f"{100 * x:+.1f}" for x in r["overhead_paired_all"])
      lines.append(f"  {r['model']:<16} {r['steps_per_epoch']:>4} steps: overhead "
                   f"{100 * r['overhead_fraction']:+.1f}% ({each}); fastest epoch "
                   f"{r['epoch_s']:.3f} s vs {r['steps_x_step_s']:.3f} s "
                   f"({100 * r['overhead_fastest']:+.1f}%; vs blocked steps "
                   f"{100 * r['overhead_vs_blocked_step']:+.1f}%)")
  scaling = results.get("scaling")
  if scaling:
    lines.append("")
    lines.append(f"pmapped step on fake CPU devices ({scaling['model']}, "
                 f"{scaling['per_device_batch']} per device; code path, not speed):")
    for r in scaling["rows"]:
      if "error" in r:
        lines.append(f"  {r['devices']} devices: error: {r['error'][-200:]}")
      else:
        lines.append(f"  {r['devices']} devices: {r['images_per_s']:,.0f} img/s, "
                     f"efficiency {r.get('efficiency', float('nan')):.2f}")
  lines.append("")
  lines.append(f"total {results['total_s']:.0f} s (" + ", ".join(
      f"{k} {v:.0f}" for k, v in results["section_s"].items()) + ")")
  return "\n".join(lines)


def _cpu_jiffies() -> list[int]:
  """/proc/stat's aggregate CPU counters (user nice system idle iowait irq softirq steal)."""
  try:
    with open("/proc/stat") as f:
      return [int(v) for v in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return []


def _busy_and_steal(start: list[int], end: list[int]) -> dict[str, float]:
  """Shares of CPU time over the run: busy (all but idle) and stolen by the hypervisor."""
  if not start or not end:
    return {}
  delta = [b - a for a, b in zip(start, end)]
  total = max(sum(delta), 1)
  return {"cpu_busy_fraction": 1 - (delta[3] + delta[4]) / total,
          "cpu_steal_fraction": delta[7] / total}


def _environment() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  with contextlib.suppress(OSError):
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  return {"time": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": " ".join([os.path.basename(sys.executable), "-m", "rethinking.bench",
                               *sys.argv[1:]]),
          "cpu": cpu, "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
          "device_count": jax.device_count(), "device": str(jax.devices()[0].device_kind),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_average_start": list(os.getloadavg())}


@contextlib.contextmanager
def _timed(sections: dict[str, float], name: str):
  """Adds the wall time of the block to sections[name] (where the benchmark's time goes)."""
  print(f"[bench] {name} ...", file=sys.stderr, flush=True)
  start = time.perf_counter()
  try:
    yield
  finally:
    sections[name] = time.perf_counter() - start


def _guarded(fn: Callable[[], dict], **context) -> dict:
  """fn()'s result, or the error (one section failing does not lose the others)."""
  try:
    return fn()
  except app.UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    return dict(context, error=repr(e))


def run_all() -> dict[str, Any]:
  """Every section, as configured by the flags; returns the results dict (the JSON)."""
  import jax  # pylint: disable=g-import-not-at-top
  if not FLAGS.compilation_cache:  # Cold compile times (main.py turns the cache on).
    jax.config.update("jax_enable_compilation_cache", False)
  start = time.perf_counter()
  results: dict[str, Any] = {"schema": 1, "environment": _environment()}
  jiffies = _cpu_jiffies()
  results["environment"]["compilation_cache"] = bool(
      FLAGS.compilation_cache and jax.config.jax_compilation_cache_dir)
  results["settings"] = {k: FLAGS[k].value for k in (
      "models", "batch_size", "steps", "warmup", "max_seconds",
      "fused_steps", "fused_models", "step_models", "epoch_models", "epoch_images",
      "epoch_seconds", "devices", "scaling_model", "quick")}
  sections = results["section_s"] = {}
  with _timed(sections, "matmul peak"):
    results["matmul_peak"] = matmul_peak(1024 if FLAGS.quick else 2048)
  peak = results["matmul_peak"]["gflops"]
  with tempfile.TemporaryDirectory(prefix="rethinking_bench_") as tmp_dir:
    tmp = pathlib.Path(tmp_dir)
    results["models"] = []
    for spec in FLAGS.models:
      name, size, batch = parse_model(spec, FLAGS.batch_size)
      with _timed(sections, f"{name}@{size}/{batch}"):
        if name == "inception_v3":
          row = _guarded(lambda: bench_imagenet_model(name, size, batch),
                         model=name, image_size=size)
        else:
          row = _guarded(lambda: bench_cifar_model(name, batch, tmp),
                         model=name, image_size=size)
        if "error" not in row:
          _derived(row, peak)
      results["models"].append(row)

    with _timed(sections, "cifar input pipeline"):
      cifar = bench_cifar_pipeline(FLAGS.batch_size)
      # The pipeline alone over the train step (an upper bound: it includes writing
      # each batch out), and measured inside the step where it was (fast models).
      cifar["share_of_step"] = {
          r["model"]: cifar["none"]["step_ms"] / r["train"]["step_ms"]
          for r in results["models"] if "train" in r and r["image_size"] == 28}
      cifar["share_in_step"] = {r["model"]: r["input_share"]["fraction"]
                                for r in results["models"] if "input_share" in r}
      results["input_pipeline"] = {"cifar": cifar}
    if FLAGS.imagenet_pipeline:
      with _timed(sections, "imagenet input pipeline"):
        size, batch = (75, 8) if FLAGS.quick else (299, 32)
        results["input_pipeline"]["imagenet"] = _guarded(
            lambda: bench_imagenet_pipeline(size, batch, 4 * batch, tmp))

    results["end_to_end"] = []
    for name in [m for m in FLAGS.epoch_models if m]:
      with _timed(sections, f"real epoch {name}"):
        images = FLAGS.epoch_images or _epoch_images(
            name, results["models"], FLAGS.batch_size, FLAGS.epoch_seconds)
        results["end_to_end"].append(_guarded(lambda: bench_epoch(
            name, FLAGS.batch_size, images, FLAGS.cifar_data, tmp), model=name))

    if FLAGS.devices > 0:
      with _timed(sections, f"scaling 1..{FLAGS.devices} devices"):
        results["scaling"] = bench_scaling(FLAGS.devices, FLAGS.scaling_model,
                                           FLAGS.batch_size)
  results["environment"]["load_average_end"] = list(os.getloadavg())
  results["environment"].update(_busy_and_steal(jiffies, _cpu_jiffies()))
  results["total_s"] = time.perf_counter() - start
  return results


def _epoch_images(name: str, rows: list[dict], batch_size: int, seconds: float) -> int:
  """Training images for about `seconds` of steps, between 8 batches and CIFAR-10's
  50,000 (an epoch's fixed costs, evaluation aside, are spread as in a real run)."""
  step_ms = next((r["train"]["step_ms"] for r in rows if r.get("model") == name
                  and "train" in r), 100.0)
  return min(50_000, max(8, math.ceil(1e3 * seconds / step_ms)) * batch_size)


def _num_train_images(path: str) -> int:
  if not os.path.exists(path):
    return 0
  with np.load(path) as f:
    return len(f["y_train"])


def _apply_quick() -> None:
  """--quick: one tiny model and every section at its smallest (the test's run)."""
  for name, value in {"models": ["mlp_1x512"], "batch_size": 16, "steps": 3, "warmup": 1,
                      "fused_models": ["mlp_1x512"], "step_models": ["mlp_1x512"],
                      "max_seconds": 2.0, "fused_steps": 2, "epoch_models": ["mlp_1x512"],
                      "epoch_images": 64, "devices": 2}.items():
    if not FLAGS[name].present:
      FLAGS[name].value = value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import rethinking  # pylint: disable=g-import-not-at-top,unused-import  # XLA defaults.
  if FLAGS.scaling_worker:
    if not FLAGS.compilation_cache:
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_enable_compilation_cache", False)
    print(json.dumps(scaling_worker(FLAGS.scaling_worker, FLAGS.scaling_model,
                                    FLAGS.batch_size)))
    return
  if FLAGS.quick:
    _apply_quick()
  results = run_all()
  print(table(results))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  app.run(main)
