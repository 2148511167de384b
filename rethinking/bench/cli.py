"""`python -m rethinking.bench`'s flags, and every section run in order (`run_all`): the
results dict that is printed as a table and written as JSON; or, with --compare, two written
runs side by side without measuring anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags

from rethinking.bench import environment
from rethinking.bench import epoch
from rethinking.bench import pipelines
from rethinking.bench import scaling
from rethinking.bench import steps
from rethinking.bench import table
from rethinking.bench import tasks
from rethinking.bench import timing

CIFAR_NPZ = tasks.REPO.parent / "shared" / "data" / "cifar10_10k.npz"
DEFAULT_MODELS = tasks.CIFAR_MODELS + ("inception_v3@299/8", "inception_v3@75/32")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags, defined when run as a program (`run`), so modules that share
  names (bench.device_check, profile_ops) import beside this one."""
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
  flags.DEFINE_integer("fused_steps", 8,
                       "Steps per call for the fused (steps_per_dispatch) figure.")
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
                       "recent GPU in bfloat16): the ImageNet input's CPU cores needed per N "
                       "of them.")
  flags.DEFINE_bool("quick", False, "A run of minutes: mlp_1x512, batch 16, every section tiny.")
  flags.DEFINE_string("json", None, "Write the results here as JSON.")
  flags.DEFINE_list("compare", [],
                    "Two bench JSON files (a.json,b.json): print them side by side (per model: "
                    "train img/s, PyTorch's and the ratio; each run's CPU, ISA and XLA flags) "
                    "and measure nothing.")
  flags.DEFINE_bool("compilation_cache", False,
                    "Keep JAX's persistent compilation cache as configured (e.g. by "
                    "JAX_COMPILATION_CACHE_DIR); off by default so compile times are cold.")
  flags.DEFINE_integer("scaling_worker", 0, "Internal: time the pmapped step on this many "
                       "devices and print JSON (run in a subprocess).")


def budget() -> timing.Budget:
  return timing.Budget(FLAGS.steps, FLAGS.warmup, FLAGS.min_seconds, FLAGS.max_seconds)


@contextlib.contextmanager
def _timed(sections: dict[str, float], name: str):
  """Adds the wall time of the block to sections[name] (where the benchmark's time goes)."""
  print(f"[bench] {name} ...", file=sys.stderr, flush=True)
  start = time.perf_counter()
  try:
    yield
  finally:
    sections[name] = time.perf_counter() - start


def run_all() -> dict[str, Any]:
  """Every section, as configured by the flags; returns the results dict (the JSON)."""
  import jax  # pylint: disable=g-import-not-at-top
  if not FLAGS.compilation_cache:  # Cold compile times (main.py turns the cache on).
    jax.config.update("jax_enable_compilation_cache", False)
  start = time.perf_counter()
  results: dict[str, Any] = {"schema": 2, "environment": environment.environment()}
  jiffies = environment.cpu_jiffies()
  results["environment"]["compilation_cache"] = bool(
      FLAGS.compilation_cache and jax.config.jax_compilation_cache_dir)
  results["settings"] = {k: FLAGS[k].value for k in (
      "models", "batch_size", "steps", "warmup", "max_seconds",
      "fused_steps", "fused_models", "step_models", "epoch_models", "epoch_images",
      "epoch_seconds", "devices", "scaling_model", "quick")}
  b = budget()
  sections = results["section_s"] = {}
  with _timed(sections, "matmul peak"):
    results["matmul_peak"] = timing.matmul_peak(1024 if FLAGS.quick else 2048)
  peak = results["matmul_peak"]["gflops"]
  with tempfile.TemporaryDirectory(prefix="rethinking_bench_") as tmp_dir:
    tmp = pathlib.Path(tmp_dir)
    results["models"] = []
    for spec in FLAGS.models:
      name, size, batch = tasks.parse_model(spec, FLAGS.batch_size)
      with _timed(sections, f"{name}@{size}/{batch}"):
        if name == "inception_v3":
          row = timing.guarded(lambda: steps.bench_imagenet_model(name, size, batch, b),
                               model=name, image_size=size)
        else:
          row = timing.guarded(lambda: steps.bench_cifar_model(
              name, batch, tmp, b,
              fused_steps=FLAGS.fused_steps if name in FLAGS.fused_models else 0,
              bare_step=name in FLAGS.step_models, torch_python=FLAGS.torch_python,
              # The measured paths stay those of today's defaults whatever "auto"
              # values the config gains.
              half_precision=False, steps_per_dispatch=1),
              model=name, image_size=size)
        if "error" not in row:
          steps.derived(row, peak)
      results["models"].append(row)

    with _timed(sections, "cifar input pipeline"):
      cifar = pipelines.bench_cifar_pipeline(FLAGS.batch_size, b)
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
        results["input_pipeline"]["imagenet"] = timing.guarded(
            lambda: pipelines.bench_imagenet_pipeline(
                size, batch, 4 * batch, tmp, b, jpeg_scale=0.25 if FLAGS.quick else 1.0,
                accelerator_images_per_s=FLAGS.accelerator_images_per_s))

    results["end_to_end"] = []
    for name in [m for m in FLAGS.epoch_models if m]:
      with _timed(sections, f"real epoch {name}"):
        images = FLAGS.epoch_images or epoch.epoch_images(
            name, results["models"], FLAGS.batch_size, FLAGS.epoch_seconds)
        results["end_to_end"].append(timing.guarded(lambda: epoch.bench_epoch(
            name, FLAGS.batch_size, images, FLAGS.cifar_data, tmp, b), model=name))

    if FLAGS.devices > 0:
      with _timed(sections, f"scaling 1..{FLAGS.devices} devices"):
        results["scaling"] = scaling.bench_scaling(
            FLAGS.devices, FLAGS.scaling_model, FLAGS.batch_size, b, FLAGS.compilation_cache)
  results["environment"]["load_average_end"] = list(os.getloadavg())
  results["environment"].update(environment.busy_and_steal(jiffies, environment.cpu_jiffies()))
  results["total_s"] = time.perf_counter() - start
  return results


def _apply_quick() -> None:
  """--quick: one tiny model and every section at its smallest (the test's run)."""
  for name, value in {"models": ["mlp_1x512"], "batch_size": 16, "steps": 3, "warmup": 1,
                      "fused_models": ["mlp_1x512"], "step_models": ["mlp_1x512"],
                      "max_seconds": 2.0, "fused_steps": 2, "epoch_models": ["mlp_1x512"],
                      "epoch_images": 64, "devices": 2}.items():
    if not FLAGS[name].present:
      FLAGS[name].value = value


def _usage_error(message: str) -> None:
  """One line on stderr and exit 2 (absl's UsageError would print the whole usage)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _compare() -> None:
  given = ",".join(FLAGS.compare)
  if len(FLAGS.compare) != 2:
    _usage_error(f"--compare={given}: expected two bench JSON files, a.json,b.json")
  try:
    runs = [(path, table.load_run(path)) for path in FLAGS.compare]
  except ValueError as e:
    _usage_error(f"--compare={given}: {e}")
  print(table.compare(runs))


def main(argv):
  if len(argv) > 1:
    _usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.compare:
    _compare()
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import rethinking  # pylint: disable=g-import-not-at-top,unused-import  # XLA defaults.
  if FLAGS.scaling_worker:
    if not FLAGS.compilation_cache:
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_enable_compilation_cache", False)
    print(json.dumps(scaling.scaling_worker(FLAGS.scaling_worker, FLAGS.scaling_model,
                                            FLAGS.batch_size, budget())))
    return
  if FLAGS.quick:
    _apply_quick()
  results = run_all()
  print(table.table(results))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {FLAGS.json}")


def run() -> None:
  define_flags()
  app.run(main)
