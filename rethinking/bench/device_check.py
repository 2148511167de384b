r"""One check for a lent accelerator, in under 10 minutes: what this code gets out of it.

  launch/device_check.sh                    # a GPU/TPU host (VENV: the environment)
  python -m rethinking.bench.device_check --json=/tmp/device_check.json
  python -m rethinking.bench.device_check --tiny   # any CPU, seconds: the code path only

It prints, from real measurements on the device:
  1. train images/s of each CIFAR model (`train.InMemoryTask.train`, batch 128): float32,
     bfloat16, and bfloat16 with --fused_steps steps per call (`steps_per_dispatch`);
  2. Inception V3's MFU at 299x299 in bfloat16 (the ImageNet path, `parallel.pmapped_steps`):
     the train step's FLOPs from XLA's cost analysis over its time, against the device's
     peak dense bfloat16 FLOP/s (PEAK_BF16_FLOPS, by `device_kind`; "unknown peak" else);
  3. the time of a paper-length inception_small CIFAR-10 run (configs/cifar10.py's recipe:
     its num_epochs of 391 steps, evaluation each epoch), extrapolated from its first epoch
     (compilation) and two more real epochs of `loop.run` (`epoch.paper_run`);
  4. the time of the whole paper-scale figure1bc sweep (configs/sweeps.py, 33 runs), from
     each model's measured epochs by two stated rules: every run to its num_epochs cap (an
     upper bound: `fit` stops a run at 100% train accuracy), and the paper's relative time
     to overfit (Figure 1b, rethinking/paper.py) with p = 1 taking the cap.

--tiny swaps in mlp_1x512 for every model, batch 16 and a few hundred images: numbers that
mean nothing, through every code path (tests/test_device_check.py runs it).
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags

from rethinking import backend_defaults
from rethinking.bench import environment
from rethinking.bench import epoch
from rethinking.bench import steps
from rethinking.bench import tasks
from rethinking.bench import timing

# Peak dense bfloat16 FLOP/s per chip (vendor datasheets, no sparsity), matched in order
# against jax's `device_kind` (lower case): the more specific name first.
PEAK_BF16_FLOPS = (
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM
    ("a100", 312e12),
    ("tpu v5 lite", 197e12),  # v5e's device_kind
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p's device_kind
    ("tpu v4", 275e12),
)
CIFAR_MODELS = ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags, defined only when run as a program (rethinking.bench.cli,
  imported beside this module, defines some of the same names)."""
  flags.DEFINE_bool("tiny", False, "Any CPU, seconds: mlp_1x512 for every model, batch 16, "
                    "a few hundred images (checks the code path; the numbers mean nothing).")
  flags.DEFINE_list("models", list(CIFAR_MODELS), "CIFAR models whose train img/s is printed.")
  flags.DEFINE_integer("batch_size", 128, "CIFAR train batch.")
  flags.DEFINE_integer("fused_steps", backend_defaults.FUSED_STEPS,
                       "Steps per call of the fused bfloat16 figure (0: skip).")
  flags.DEFINE_string("mfu_model", "inception_v3@299/128",
                      "name@size/batch of the MFU measurement (bfloat16, the ImageNet path).")
  flags.DEFINE_string("paper_model", "inception_small", "Model of the paper-length CIFAR run.")
  flags.DEFINE_string("sweep", "figure1bc", "Sweep of configs/sweeps.py to estimate (paper scale).")
  flags.DEFINE_integer("epochs_timed", 2, "Real epochs timed after the first (compiling) one.")
  flags.DEFINE_bool("half_precision", True, "bfloat16 compute in the timed runs (section 3, 4).")
  flags.DEFINE_integer("steps_per_dispatch", backend_defaults.FUSED_STEPS,
                       "Steps per call in the timed runs (3, 4).")
  flags.DEFINE_integer("steps", 20, "Timed calls per throughput figure (at least).")
  flags.DEFINE_float("max_seconds", 10.0, "Stop timing a throughput figure after this long.")
  flags.DEFINE_string("json", None, "Also write every number here as JSON.")


TINY = {"models": ["mlp_1x512"], "batch_size": 16, "fused_steps": 2,
        "mfu_model": "mlp_1x512@28/16", "paper_model": "mlp_1x512", "steps": 3,
        "max_seconds": 1.0, "half_precision": False, "steps_per_dispatch": 1}
TINY_DATA = {"num_train": 160, "num_test": 100}  # 10 steps of 16 per epoch.


def peak_bf16_flops(device_kind: str) -> float | None:
  """The device's peak dense bfloat16 FLOP/s, or None for a kind not in the table."""
  kind = device_kind.lower()
  return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def figure1b_relative(model: str, p: float) -> float | None:
  """Figure 1b's time to overfit at label corruption p relative to p = 0 (linear between
  the points the paper gives); None for a model it does not plot."""
  from rethinking import paper  # pylint: disable=g-import-not-at-top
  known = [(i / 10, v) for i, v in enumerate(paper.FIGURE1B.get(model, ())) if v is not None]
  if not known:
    return None
  for (p0, v0), (p1, v1) in zip(known, known[1:]):
    if p0 <= p <= p1:
      return v0 + (v1 - v0) * (p - p0) / (p1 - p0)
  return known[-1][1] if p > known[-1][0] else known[0][1]


def sweep_jobs(name: str) -> list:
  """The runs of sweep `name` at paper scale, one seed, each with its resolved config."""
  from rethinking import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as root:
    return sweep_lib.expand(name, root)


def sweep_estimate(name: str, jobs: list, runs_per_model: dict[str, dict[str, Any]]
                   ) -> dict[str, Any]:
  """Seconds for every run of sweep `name` (its `jobs`), from `runs_per_model`
  (model -> epoch.paper_run's result), by the two rules of the module docstring."""
  out: dict[str, Any] = {"sweep": name, "runs": len(jobs), "per_model": {},
                         "cap_s": 0.0, "paper_shape_s": 0.0, "not_measured": []}
  for job in jobs:
    config, model = job.config, job.config.model
    timed = runs_per_model.get(model)
    if timed is None:
      if model not in out["not_measured"]:
        out["not_measured"].append(model)
      continue
    first, per_epoch = timed["first_epoch_s"], timed["epoch_s"]
    cap = first + (config.num_epochs - 1) * per_epoch
    rel, rel_p1 = figure1b_relative(model, config.corrupt_prob), figure1b_relative(model, 1.0)
    epochs = config.num_epochs * rel / rel_p1 if rel and rel_p1 else config.num_epochs
    shaped = first + (math.ceil(epochs) - 1) * per_epoch
    row = out["per_model"].setdefault(model, {"runs": 0, "num_epochs": config.num_epochs,
                                              "epoch_s": per_epoch, "cap_s": 0.0,
                                              "paper_shape_s": 0.0})
    row["runs"] += 1
    row["cap_s"] += cap
    row["paper_shape_s"] += shaped
    out["cap_s"] += cap
    out["paper_shape_s"] += shaped
  return out


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.1f} s"
  return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _budget() -> timing.Budget:
  return timing.Budget(FLAGS.steps, 2, 0.0, FLAGS.max_seconds)


def train_rates(tmp: pathlib.Path) -> list[dict[str, Any]]:
  """Section 1: per model, train img/s in float32, bfloat16, and bfloat16 fused."""
  rows = []
  for name in FLAGS.models:
    row: dict[str, Any] = {"model": name, "batch_size": FLAGS.batch_size}
    for label, half, fused in (("float32", False, 0), ("bfloat16", True, FLAGS.fused_steps)):
      r = timing.guarded(lambda: steps.bench_cifar_model(
          name, FLAGS.batch_size, tmp, _budget(), fused_steps=fused, evaluate=False,
          half_precision=half, steps_per_dispatch=1), model=name)
      if "error" in r:
        row[label] = {"error": r["error"]}
        continue
      row[label] = r["train"]["images_per_s"]
      if "train_fused" in r:
        row[f"{label}_fused"] = r["train_fused"]["images_per_s"]
    rows.append(row)
  return rows


def mfu(device_kind: str) -> dict[str, Any]:
  """Section 2: the MFU model's bfloat16 train step on the ImageNet path."""
  name, size, batch = tasks.parse_model(FLAGS.mfu_model, FLAGS.batch_size)
  row = steps.bench_imagenet_model(name, size, batch, _budget(), dtype="bfloat16")
  step_s = row["train"]["step_ms"] / 1e3
  out = {"model": name, "image_size": size, "batch_size": row["batch_size"],
         "dtype": "bfloat16", "step_s": step_s, "images_per_s": row["train"]["images_per_s"],
         "flops_per_step": row["flops_per_step"], "flops_source": row["flops_source"],
         "compile_s": row["compile_s"], "device_kind": device_kind, "devices": row["devices"],
         "peak_flops": peak_bf16_flops(device_kind)}
  if out["flops_per_step"]:
    # Both over all local devices: the step's count is per device x devices.
    out["achieved_flops"] = out["flops_per_step"] / step_s
    if out["peak_flops"]:
      out["mfu"] = out["achieved_flops"] / (out["peak_flops"] * row["devices"])
  return out


def timed_runs(tmp: pathlib.Path, models: list[str]) -> dict[str, dict[str, Any]]:
  """Sections 3 and 4: `epoch.paper_run` of each model (the paper model's is section 3)."""
  overrides = {"half_precision": FLAGS.half_precision,
               "steps_per_dispatch": FLAGS.steps_per_dispatch}
  if FLAGS.tiny:
    overrides["batch_size"] = FLAGS.batch_size
  data = TINY_DATA if FLAGS.tiny else {}
  return {m: timing.guarded(lambda: epoch.paper_run(
      m, tmp, epochs_timed=FLAGS.epochs_timed, **data, **overrides), model=m) for m in models}


def report(results: dict[str, Any]) -> str:
  """The printed lines (each section's numbers; the test reads them)."""
  env = results["environment"]
  lines = [f"device check{' (tiny: code path only, numbers mean nothing)' if FLAGS.tiny else ''}"
           f": {env['device']} ({env['backend']} x{env['device_count']}), jax {env['jax']}; "
           f"host {env['cpu']}, load average {env['load_average_start'][0]:.2f}"]
  k = FLAGS.fused_steps
  lines.append(f"1. train img/s (train.InMemoryTask.train, batch {FLAGS.batch_size}):")
  lines.append(f"  {'model':<18}{'float32':>10}{'bfloat16':>10}{f'bf16 x{k}':>10}")
  for row in results["train"]:
    cells = [row.get(key) for key in ("float32", "bfloat16", "bfloat16_fused")]
    lines.append(f"  {row['model']:<18}" + "".join(
        f"{'error' if isinstance(c, dict) else '-' if c is None else f'{c:,.0f}':>10}"
        for c in cells))
    lines += [f"  {row['model']} {key}: {row[key]['error'][:200]}" for key in
              ("float32", "bfloat16") if isinstance(row.get(key), dict)]
  m = results["mfu"]
  if "error" in m:
    lines.append(f"2. MFU: error: {m['error'][:300]}")
  else:
    head = (f"2. MFU {m['model']}@{m['image_size']}/{m['batch_size']} bfloat16: "
            f"{m['images_per_s']:,.1f} img/s, {1e3 * m['step_s']:.1f} ms/step, ")
    if not m.get("achieved_flops"):
      lines.append(head + "no FLOP count from XLA's cost analysis")
    else:
      head += (f"{m['flops_per_step'] / 1e9:,.1f} GFLOP/step (XLA cost analysis): "
               f"{m['achieved_flops'] / 1e12:,.2f} TFLOP/s")
      lines.append(head + (f" = MFU {100 * m['mfu']:.1f}% of {m['peak_flops'] / 1e12:.0f} "
                           f"TFLOP/s ({m['device_kind']}, dense bf16 peak)" if m.get("mfu")
                           else f"; unknown peak for device kind {m['device_kind']!r}"))
  p = results["paper_run"]
  if "error" in p:
    lines.append(f"3. paper-length {p['model']} run: error: {p['error'][:300]}")
  else:
    lines.append(
        f"3. paper-length {p['model']} run (configs/cifar10.py: {p['num_epochs']} epochs x "
        f"{p['steps_per_epoch']} steps of {p['batch_size']}, {p['num_train']:,} images, "
        f"train-set eval {'on' if p['eval_train'] else 'off'}; "
        f"{'bfloat16' if p['half_precision'] else 'float32'}, "
        f"steps_per_dispatch {p['steps_per_dispatch']}): first epoch {p['first_epoch_s']:.1f} s "
        f"(compilation), then " + ", ".join(f"{s:.2f} s" for s in p["epoch_s_all"]) +
        f" -> {_duration(p['estimated_run_s'])} estimated ({p['estimated_run_s']:.0f} s)")
  s = results["sweep"]
  lines.append(f"4. {s['sweep']} sweep, paper scale ({s['runs']} runs, one seed; each "
               "run's epochs at its model's measured epoch time, first epoch as measured):")
  lines.append(f"  every run to its num_epochs cap (upper bound: fit stops earlier): "
               f"{_duration(s['cap_s'])} ({s['cap_s']:.0f} s)")
  lines.append(f"  paper's relative time to overfit (Figure 1b; p = 1 at the cap): "
               f"{_duration(s['paper_shape_s'])} ({s['paper_shape_s']:.0f} s)")
  for model, row in s["per_model"].items():
    lines.append(f"  {model}: {row['runs']} runs, cap {row['num_epochs']} epochs of "
                 f"{row['epoch_s']:.2f} s: {_duration(row['cap_s'])} / "
                 f"{_duration(row['paper_shape_s'])}")
  if s["not_measured"]:
    lines.append(f"  not measured (left out of both totals): {', '.join(s['not_measured'])}")
  lines.append(f"device check took {results['total_s']:.0f} s (" + ", ".join(
      f"{k} {v:.0f}" for k, v in results["section_s"].items()) + ")")
  return "\n".join(lines)


def run_check() -> dict[str, Any]:
  """Every section; the results dict."""
  start = time.perf_counter()
  results: dict[str, Any] = {"environment": environment.environment(
      "rethinking.bench.device_check"), "tiny": FLAGS.tiny, "section_s": {}}
  device_kind = results["environment"]["device"]
  sections = results["section_s"]
  jobs = sweep_jobs(FLAGS.sweep)
  # --tiny times the paper model alone: the sweep's other models are then said unmeasured.
  timed_models = list(dict.fromkeys([FLAGS.paper_model] + (
      [] if FLAGS.tiny else [job.config.model for job in jobs])))
  with tempfile.TemporaryDirectory(prefix="rethinking_device_check_") as tmp_dir:
    tmp = pathlib.Path(tmp_dir)
    for key, fn in (("train", lambda: train_rates(tmp)),
                    ("mfu", lambda: timing.guarded(lambda: mfu(device_kind), model="mfu")),
                    ("timed_runs", lambda: timed_runs(tmp, timed_models))):
      print(f"[device_check] {key} ...", file=sys.stderr, flush=True)
      t = time.perf_counter()
      results[key] = fn()
      sections[key] = time.perf_counter() - t
  results["paper_run"] = results["timed_runs"][FLAGS.paper_model]
  measured = {m: r for m, r in results["timed_runs"].items() if "error" not in r}
  results["sweep"] = sweep_estimate(FLAGS.sweep, jobs, measured)
  results["total_s"] = time.perf_counter() - start
  results["environment"]["load_average_end"] = list(os.getloadavg())
  return results


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
    sys.exit(2)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import rethinking  # pylint: disable=g-import-not-at-top,unused-import  # XLA defaults.
  if FLAGS.tiny:
    for name, value in TINY.items():
      if not FLAGS[name].present:
        FLAGS[name].value = value
  try:  # Every model name checked before the first measurement.
    tasks.parse_model(FLAGS.mfu_model, flag="mfu_model")
    for name in [*FLAGS.models, FLAGS.paper_model]:
      tasks.parse_model(name, flag="models" if name in FLAGS.models else "paper_model")
  except app.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  results = run_check()
  print(report(results), flush=True)
  if FLAGS.json:
    import json  # pylint: disable=g-import-not-at-top
    pathlib.Path(FLAGS.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
