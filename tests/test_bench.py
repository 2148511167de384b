"""The benchmark command, and the hot path it measures: fused steps and on-device metric sums."""

import functools
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO
import rethinking
from rethinking import loop
from rethinking import train
from rethinking.data import in_memory

BATCH, NUM_TRAIN, FUSED = 8, 64, 5


def test_quick_benchmark_writes_every_field(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, "-m", "rethinking.bench", "--quick", "--compilation_cache",
                         f"--json={out}"],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "train img/s" in proc.stdout and "x torch" in proc.stdout
  r = json.loads(out.read_text())

  env = r["environment"]
  assert {"xla_flags", "load_average_start", "load_average_end", "jax", "cpu",
          "cpu_steal_fraction", "cpu_flags", "cpu_cores", "cpus_usable",
          "rethinking_xla_defaults", "xla_defaults", "xla_defaults_in_effect"} <= set(env)
  assert env["cpu_count"] >= env["cpus_usable"] >= 1
  # What `import rethinking` added is in the flags jax ran with, and said so.
  assert set(env["xla_defaults_in_effect"]) <= set(env["xla_flags"].split())
  assert f"XLA_FLAGS={env['xla_flags']!r}" in proc.stdout
  assert r["matmul_peak"]["gflops"] > 0

  (m,) = r["models"]
  assert (m["model"], m["image_size"], m["batch_size"]) == ("mlp_1x512", 28, 16)
  assert m["compile_s"] > 0 and m["step_compile_s"] > 0
  assert m["flops_source"] == "compiled step.train_step"
  for section in ("train", "train_fused", "step", "eval"):
    assert m[section]["images_per_s"] > 0 and m[section]["step_ms"] > 0, section
  assert m["train_fused"]["steps_per_call"] == 2
  # XLA's count for one step: forward + weight gradients of both layers (no input
  # gradient), ~2 * B * 2 * 2352 * 512, plus small elementwise terms. Forward-only,
  # per-example or per-scan-iteration counts would fall outside.
  analytic = 2 * 16 * 2 * (2352 * 512 + 512 * 10)
  assert 0.95 * analytic < m["flops_per_step"] < 1.5 * analytic
  assert m["achieved_gflops"] == pytest.approx(
      m["flops_per_step"] / (m["train"]["step_ms"] / 1e3) / 1e9)
  assert m["peak_fraction"] == pytest.approx(m["achieved_gflops"] / r["matmul_peak"]["gflops"])

  cifar = r["input_pipeline"]["cifar"]
  for augment in ("none", "crop_flip", "full"):
    assert cifar[augment]["images_per_s"] > 0
  assert cifar["share_of_step"]["mlp_1x512"] == pytest.approx(
      cifar["none"]["step_ms"] / m["train"]["step_ms"])
  # A fast step: the input's share measured inside it too, real vs bare step interleaved.
  share = m["input_share"]
  assert cifar["share_in_step"]["mlp_1x512"] == share["fraction"] == pytest.approx(
      share["real_step_ms"] / share["bare_step_ms"] - 1)
  assert len(share["rounds_s"]["real"]) == len(share["rounds_s"]["bare"]) == 8
  assert share["real_step_ms"] == pytest.approx(1e3 * min(share["rounds_s"]["real"]))
  imagenet = r["input_pipeline"]["imagenet"]
  assert imagenet.get("images_per_s", 0) > 0 or "skipped" in imagenet, imagenet

  (e2e,) = r["end_to_end"]
  assert "error" not in e2e, e2e
  assert e2e["steps_per_epoch"] == 64 // 16 and e2e["epochs_timed"] == 4
  assert e2e["epoch_s"] == min(e2e["epoch_s_all"]) > 0
  assert e2e["steps_x_step_s"] == min(e2e["steps_x_step_s_all"]) > 0
  passes, epochs = e2e["steps_x_step_s_all"], e2e["epoch_s_all"]
  assert len(passes) == 5  # One reference pass after each epoch.
  assert e2e["steps_x_step_s"] == pytest.approx(
      e2e["steps_per_epoch"] * e2e["pipelined_step_ms"] / 1e3)
  # Each timed epoch (the 2nd to the 5th) against the mean of the passes around it.
  paired = [epochs[i] / ((passes[i] + passes[i + 1]) / 2) - 1 for i in range(4)]
  assert e2e["overhead_paired_all"] == pytest.approx(paired)
  assert e2e["overhead_fraction"] == pytest.approx(np.median(paired))
  assert e2e["overhead_fastest"] == pytest.approx(e2e["epoch_s"] / e2e["steps_x_step_s"] - 1)

  rows = r["scaling"]["rows"]
  assert [row["devices"] for row in rows] == [1, 2], rows
  assert all(row["images_per_s"] > 0 for row in rows), rows
  assert rows[0]["efficiency"] == pytest.approx(1.0)


def _config(**overrides) -> ml_collections.ConfigDict:
  """configs/cifar10.py's mlp_1x512 config: crop + flip, weight decay, tiny batches."""
  spec = importlib.util.spec_from_file_location("cifar10_config", REPO / "configs" / "cifar10.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("model=mlp_1x512,augment=crop_flip,wd")
  config.update(dict(batch_size=BATCH, eval_batch_size=32, eval_train=False, **overrides))
  return config


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  """An InMemoryTask on 64 random 32x32 images: 8 steps per epoch of 8 examples."""
  path = tmp_path_factory.mktemp("data") / "tiny.npz"
  rng = np.random.default_rng(0)
  np.savez(path, x_train=rng.integers(0, 256, (NUM_TRAIN, 32, 32, 3), dtype=np.uint8),
           y_train=np.arange(NUM_TRAIN) % 10,
           x_test=rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
           y_test=np.arange(32) % 10)
  config = _config(dataset=str(path))
  return train.InMemoryTask(config, train.load_data(config))


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def test_fused_steps_equal_single_steps(task):
  """steps_per_dispatch=k (one call of k steps) gives the state and sums of k calls of 1."""
  single, fused = task.init_state(), task.init_state()  # Each is donated below.
  carrying, carried = task.init_state(), loop.train_sums()  # As loop.run: sums carried.
  per_step = []
  for step in range(FUSED):
    single, sums = task.train(single, loop.train_sums(), step, 1)
    per_step.append(_host(sums))
    carrying, carried = task.train(carrying, carried, step, 1)
  fused, fused_sums = task.train(fused, loop.train_sums(), 0, FUSED)
  assert int(single.step) == int(fused.step) == FUSED
  for a, b in zip(jax.tree_util.tree_leaves(_host(single.params)),
                  jax.tree_util.tree_leaves(_host(fused.params))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for a, b in zip(jax.tree_util.tree_leaves(_host(single.opt_state)),
                  jax.tree_util.tree_leaves(_host(fused.opt_state))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  fused_sums = _host(fused_sums)
  for key in ("loss", "correct", "correct_top5", "count"):
    np.testing.assert_allclose(fused_sums[key], sum(m[key] for m in per_step), rtol=1e-6)
  assert fused_sums["count"] == FUSED * BATCH
  assert fused_sums["first_nonfinite_step"] == -1
  for key, value in _host(carried).items():
    np.testing.assert_allclose(value, fused_sums[key], rtol=1e-6)


def _center_standardized(images: np.ndarray) -> np.ndarray:
  """The evaluation preprocessing in numpy: 28x28 center crop, per-image standardization."""
  x = images[:, 2:30, 2:30].astype(np.float64) / 255
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1 / np.sqrt(x[0].size))
  return ((x - mean) / std).astype(np.float32)


def test_device_metric_sums_equal_per_step_losses(tmp_path):
  """Sums accumulated in the fused loop equal losses recomputed outside it, step by step.

  Each step's loss is the mean cross-entropy of the parameters *before* the step on
  that step's batch; here it is recomputed in numpy from the model's logits on the
  batch (epoch order from in_memory, preprocessing in numpy, no augmentation).
  """
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (NUM_TRAIN, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, NUM_TRAIN)
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
  config = _config(dataset=str(tmp_path / "d.npz"), augment="none")
  task = train.InMemoryTask(config, train.load_data(config))
  state = task.init_state()
  perm = np.asarray(in_memory.epoch_permutation(task.keys["data"], 0, NUM_TRAIN))
  want = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  params = _host(state.params)
  for step in range(FUSED):
    idx = perm[step * BATCH:(step + 1) * BATCH]
    logits = np.asarray(task.model.apply({"params": params}, _center_standardized(x[idx]),
                                         train=False), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    want["loss"] += -logp[np.arange(BATCH), y[idx]].sum()
    want["correct"] += (logits.argmax(1) == y[idx]).sum()
    want["count"] += BATCH
    state, _ = task.train(state, loop.train_sums(), step, 1)  # The next step's parameters.
    params = _host(state.params)
  _, sums = task.train(task.init_state(), loop.train_sums(), 0, FUSED)
  sums = _host(sums)
  np.testing.assert_allclose(sums["loss"], want["loss"], rtol=1e-4)
  assert sums["correct"] == want["correct"] and sums["count"] == want["count"]


# The fast layers compute flax's math: values exactly, gradients to float32 rounding.


def _normal(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((4, 28, 28, 8), (3, 3), (2, 2), "SAME"),    # small AlexNet, small Inception's Down
    ((2, 7, 7, 8), (3, 3), (2, 2), "SAME"),      # odd size, SAME
    ((2, 35, 35, 8), (3, 3), (2, 2), "VALID"),   # Inception V3
    ((2, 9, 10, 4), (2, 3), (1, 2), ((1, 0), (2, 1))),  # explicit, asymmetric
    ((2, 1, 1, 3), (3, 3), (1, 1), "VALID"),     # window larger than the input: empty
])
def test_max_pool_equals_flax_and_routes_gradients_to_the_maximum(shape, window, strides,
                                                                  padding):
  from rethinking.models.layers import max_pool  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(_normal(*shape))  # Continuous values: no ties.
  ref = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
  new = lambda x: max_pool(x, window, strides, padding)
  np.testing.assert_array_equal(jax.jit(new)(x), ref(x))
  g = jnp.asarray(_normal(*ref(x).shape, seed=1))
  got = jax.jit(lambda x, g: jax.vjp(new, x)[1](g)[0])(x, g)
  np.testing.assert_allclose(got, jax.vjp(ref, x)[1](g)[0], rtol=1e-6, atol=1e-6)


def test_max_pool_ties_get_the_gradient_once():
  """All-zero windows (ReLU outputs): each output's gradient lands on one input."""
  from rethinking.models.layers import max_pool  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, 6, 6, 1))
  dx = jax.grad(lambda x: jnp.sum(max_pool(x, (3, 3), (2, 2), "SAME")))(x)
  assert float(dx.sum()) == 9.0 and set(np.unique(dx)) <= {0.0, 1.0, 2.0, 4.0}


def test_batch_norm_equals_flax():
  """Values, running statistics and gradients of layers.BatchNorm vs nn.BatchNorm(use_scale=False),
  including a constant channel (variance clipped to 0)."""
  from rethinking.models.layers import BatchNorm  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(_normal(8, 5, 5, 6) * 3 + 1).at[..., 2].set(0.7)
  g = jnp.asarray(_normal(8, 5, 5, 6, seed=1))
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3, use_scale=False)
  new = BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3)
  variables = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
      new.init(jax.random.PRNGKey(0), x))
  variables = jax.tree_util.tree_map(lambda v: v + 0.3, variables)

  def loss(module):
    def f(params, x):
      y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                x, mutable=["batch_stats"])
      return jnp.sum(y * g), (y, updates)
    return jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))

  (ref_grads, (ref_y, ref_stats)) = loss(ref)(variables["params"], x)
  (new_grads, (new_y, new_stats)) = loss(new)(variables["params"], x)
  np.testing.assert_allclose(new_y, ref_y, rtol=1e-6, atol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                         new_stats, ref_stats)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         new_grads, ref_grads)
  eval_ref = nn.BatchNorm(use_running_average=True, epsilon=1e-3, use_scale=False)
  eval_new = BatchNorm(use_running_average=True, epsilon=1e-3)
  np.testing.assert_allclose(eval_new.apply(variables, x), eval_ref.apply(variables, x),
                             rtol=1e-6, atol=1e-6)


def test_accumulate_sums_and_notes_the_first_nonfinite_step():
  """The running sums the loop carries through the jitted steps."""
  step_sums = lambda loss: {"loss": jnp.float32(loss), "correct": jnp.float32(3),
                            "correct_top5": jnp.float32(5), "count": jnp.float32(8)}
  accumulate = jax.jit(loop.accumulate, donate_argnums=0)
  sums = loop.train_sums({"loss": 1.5, "correct": 1, "correct_top5": 2, "count": 8})
  for step, loss in enumerate([0.5, 2.0]):
    sums = accumulate(sums, step_sums(loss), jnp.int32(step))
  assert _host(sums) == {"loss": 4.0, "correct": 7, "correct_top5": 12, "count": 24,
                         "first_nonfinite_step": -1}
  for step, loss in [(2, 1.0), (3, np.nan), (4, np.inf), (5, 1.0)]:
    sums = accumulate(sums, step_sums(loss), jnp.int32(step))
  assert int(sums["first_nonfinite_step"]) == 3 and float(sums["count"]) == 56


def test_cpu_xla_defaults_are_chosen_per_vendor():
  by_vendor = rethinking.CPU_XLA_FLAGS_BY_VENDOR
  assert by_vendor["AuthenticAMD"] == ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
  assert by_vendor["GenuineIntel"] == ()  # Measured slower there (issue 16).
  assert rethinking.CPU_XLA_FLAGS == by_vendor.get(rethinking.cpu_vendor(), ())


_YNN = " --xla_cpu_experimental_ynn_fusion_type=individual_dot"
_AMD = rethinking.cpu_vendor() == "AuthenticAMD"  # Else no default flag.


@pytest.mark.parametrize("env,want", [
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
     "--xla_force_host_platform_device_count=2" + (_YNN if _AMD else "")),
    ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_dot"},  # Theirs wins.
     "--xla_cpu_experimental_ynn_fusion_type=+individual_dot"),
    ({"XLA_FLAGS": "", "RETHINKING_XLA_DEFAULTS": "0"}, ""),
])
def test_cpu_xla_defaults_are_set_before_jax_starts(env, want):
  """`import rethinking` adds this CPU vendor's flag unless told not to; jax then runs
  with it (an unknown flag would abort the process)."""
  code = ("import os, rethinking, jax, jax.numpy as jnp; jnp.ones(2).block_until_ready(); "
          "print(os.environ['XLA_FLAGS'])")
  # The suite itself may run with the default off (RETHINKING_XLA_DEFAULTS=0): each case
  # sets what it tests and nothing else leaks in.
  base = {k: v for k, v in os.environ.items() if k != "RETHINKING_XLA_DEFAULTS"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env={**base, "JAX_PLATFORMS": "cpu", **env}, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  if (rethinking._jaxlib_minor() in rethinking._KNOWN_JAXLIB  # pylint: disable=protected-access
      and importlib.util.find_spec("libtpu") is None):
    assert proc.stdout.strip() == want


def test_torch_reference_models_have_the_flax_models_parameter_counts():
  """rethinking.torch_reference (run without jax) asserts these counts before timing."""
  import ast  # pylint: disable=g-import-not-at-top
  from rethinking.models import get_model  # pylint: disable=g-import-not-at-top
  tree = ast.parse((REPO / "rethinking" / "torch_reference.py").read_text())
  counts = next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "")
                == "REPO_PARAM_COUNTS")
  assert set(counts) >= {"mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small"}
  for name, count in counts.items():
    init = functools.partial(get_model(name, num_classes=10).init, train=False)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 3)))
    assert sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(shapes["params"])) == count


# Two machines side by side: `--compare` on two bench JSON files, nothing measured.

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16
processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16
"""


def test_cpu_info_reads_the_model_isa_flags_and_cores():
  from rethinking.bench import environment  # pylint: disable=g-import-not-at-top
  info = environment.cpu_info(SAPPHIRE_RAPIDS)
  assert info == {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "cpu_vendor": "GenuineIntel",
                  "cpu_flags": ["avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                                "amx_bf16", "amx_int8"],
                  "cpu_cores": 2}


def _bench_run(path, cpuinfo, xla_defaults, train, torch):
  """A bench JSON as run_all writes it: this process's environment (the CPU fields from
  `cpuinfo`, or this machine's), model rows through the bench's own `derived`."""
  from rethinking.bench import environment  # pylint: disable=g-import-not-at-top
  from rethinking.bench import steps  # pylint: disable=g-import-not-at-top
  env = dict(environment.environment(), load_average_end=[0.5, 0.5, 0.5])
  if cpuinfo:
    env.update(environment.cpu_info(cpuinfo))
  env["rethinking_xla_defaults"] = "1" if xla_defaults else "0"
  env["xla_defaults_in_effect"] = env["xla_defaults"] if xla_defaults else []
  models = []
  for (name, rate), torch_rate in zip(train.items(), torch):
    row = {"model": name, "image_size": 28, "batch_size": 128,
           "train": {"images_per_s": rate, "step_ms": 128e3 / rate}}
    if torch_rate:
      row["torch_measured"] = {"images_per_s": torch_rate}
    steps.derived(row, peak_gflops=100.0)
    models.append(row)
  path.write_text(json.dumps({"schema": 2, "environment": env, "models": models}))
  return str(path)


def _compare(*args):
  return subprocess.run([sys.executable, "-m", "rethinking.bench", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_compare_prints_two_runs_side_by_side(tmp_path):
  a = _bench_run(tmp_path / "amd.json", None, True,
                 {"mlp_1x512": 17_331, "alexnet_small": 424, "inception_small": 67},
                 [17_000, 307, 69])
  # The second run lacks inception_small and has a model the first lacks.
  b = _bench_run(tmp_path / "intel.json", SAPPHIRE_RAPIDS, False,
                 {"alexnet_small": 421, "mlp_1x512": 20_000, "mlp_3x512": 9_000},
                 [579, 21_276, None])
  run_b = json.loads(open(b).read())
  run_b["environment"]["ld_preload"] = "libtcmalloc_minimal.so.4"  # Said: it changes speed.
  open(b, "w").write(json.dumps(run_b))
  proc = _compare(f"--compare={a},{b}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert f"A: {a}" in out and f"B: {b}" in out
  assert "Intel(R) Xeon(R) Platinum 8480+" in out and "amx_bf16" in out
  assert "RETHINKING_XLA_DEFAULTS=0): none in effect" in out
  assert out.count("LD_PRELOAD='libtcmalloc_minimal.so.4'") == 1
  rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
          if line.split() and line.split()[0].endswith("@28/128")}
  # A train, torch, ratio; B train, torch, ratio; B/A train.
  assert rows["mlp_1x512@28/128"] == ["17,331", "17,000", "1.02", "20,000", "21,276", "0.94",
                                      "1.15"]
  assert rows["alexnet_small@28/128"] == ["424", "307", "1.38", "421", "579", "0.73", "0.99"]
  assert rows["inception_small@28/128"] == ["67", "69", "0.97", "-", "-", "-", "-"]
  # No torch measured for mlp_3x512 in B: issue 7's reference figure, and its source said.
  assert rows["mlp_3x512@28/128"] == ["-", "-", "-", "9,000", "12,300", "0.73", "-"]
  assert "torch B: issue 7 reference, measured in this run" in out
  assert list(rows) == ["mlp_1x512@28/128", "alexnet_small@28/128", "inception_small@28/128",
                        "mlp_3x512@28/128"]


@pytest.mark.parametrize("value,piece", [
    ("{a}", "expected two bench JSON files"),
    ("{a},{a},{a}", "expected two bench JSON files"),
    ("{a},{missing}", "No such file"),
    ("{a},{other}", "not a bench run"),
    ("{a},{broken}", "not JSON"),
])
def test_compare_mistake_is_one_line(tmp_path, value, piece):
  a = tmp_path / "a.json"
  a.write_text(json.dumps({"environment": {}, "models": []}))
  (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
  (tmp_path / "broken.json").write_text("{")
  value = value.format(a=a, missing=tmp_path / "missing.json", other=tmp_path / "other.json",
                       broken=tmp_path / "broken.json")
  proc = _compare(f"--compare={value}")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"error: --compare={value}: ") and piece in lines[0], lines[0]
  assert not proc.stdout
