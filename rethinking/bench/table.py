"""What the bench prints: the table of one run (from its results dict, the JSON), and two
runs side by side (`--compare`: per model, train img/s, PyTorch's and their ratio, under each
run's machine header).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any


def _fmt(x, spec=",.0f", missing="-"):
  return missing if x is None else format(x, spec)


def header(results: dict[str, Any]) -> list[str]:
  """The machine lines of a run: CPU, ISA flags and cores, jax, load, XLA flags, peak.
  Runs written before these fields were recorded print what they have."""
  env = results["environment"]
  end = env.get("load_average_end", env["load_average_start"])
  lines = [f"{env['cpu']} ({env['cpu_count']} CPUs), jax {env['jax']}, "
           f"{env['backend']} x{env['device_count']}; load average "
           f"{env['load_average_start'][0]:.2f} -> {end[0]:.2f}"]
  if "cpu_flags" in env:
    lines.append(f"ISA: {' '.join(env['cpu_flags']) or 'none of ' + 'avx2/avx512/amx'}; "
                 f"{_fmt(env.get('cpu_cores'), 'd', '?')} cores, "
                 f"{_fmt(env.get('cpus_usable'), 'd', '?')} usable")
  if "cpu_steal_fraction" in env:
    lines.append(f"CPU over the run: {100 * env['cpu_busy_fraction']:.0f}% busy (all "
                 f"cores = 100%), {100 * env['cpu_steal_fraction']:.1f}% stolen by the "
                 "hypervisor")
  lines.append(f"XLA_FLAGS={env['xla_flags']!r}")
  if env.get("ld_preload"):
    lines.append(f"LD_PRELOAD={env['ld_preload']!r}")
  if "xla_defaults" in env:
    lines.append(f"rethinking's CPU XLA defaults (RETHINKING_XLA_DEFAULTS="
                 f"{env['rethinking_xla_defaults']}): "
                 f"{' '.join(env['xla_defaults_in_effect']) or 'none'} in effect")
  peak = results.get("matmul_peak")
  if peak:
    lines.append(f"matmul peak (float32 {peak['n']}^3): {peak['gflops']:.1f} GFLOP/s")
  return lines


def table(results: dict[str, Any]) -> str:
  """The human-readable summary of `results`."""
  lines = header(results)
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
    elif "error" in imnet:
      lines.append(f"ImageNet tf.data pipeline: error: {imnet['error'][:100]}")
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


def load_run(path: str) -> dict[str, Any]:
  """A bench JSON; ValueError with one line where it is missing or not a bench run."""
  try:
    results = json.loads(pathlib.Path(path).read_text())
  except OSError as e:
    raise ValueError(f"{path}: {e.strerror or e}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
  if not isinstance(results, dict) or not {"environment", "models"} <= set(results):
    raise ValueError(f"{path}: not a bench run (no 'environment' and 'models'; written by "
                     "python -m rethinking.bench --json=...)")
  return results


def _model_label(row: dict[str, Any]) -> str:
  return f"{row['model']}@{row.get('image_size', '?')}/{row.get('batch_size', '?')}"


def compare(runs: list[tuple[str, dict[str, Any]]]) -> str:
  """Two (or more) runs side by side: each run's machine header, then per model its train
  img/s, PyTorch's img/s and their ratio in each run, and the last run's train img/s over
  the first's. Models in any run are listed (first run's order first); '-' where absent."""
  letters = [chr(ord("A") + i) for i in range(len(runs))]
  lines = []
  for letter, (name, results) in zip(letters, runs):
    lines.append(f"{letter}: {name} ({results['environment'].get('time', 'undated')})")
    lines += [f"  {line}" for line in header(results)]
  per_run = [{_model_label(r): r for r in results["models"]} for _, results in runs]
  labels = list(dict.fromkeys(label for rows in per_run for label in rows))
  head = f"{'model':<26}" + "".join(
      f"{f'{x} train':>11}{f'{x} torch':>10}{f'{x} ratio':>9}" for x in letters)
  head += f"{f'{letters[-1]}/{letters[0]} train':>13}"
  lines += ["", head, "-" * len(head)]
  for label in labels:
    cells, trains = [], []
    for rows in per_run:
      row = rows.get(label, {})
      train = row.get("train", {}).get("images_per_s")
      trains.append(train)
      cells.append(f"{_fmt(train):>11}{_fmt(row.get('torch_images_per_s')):>10}"
                   f"{_fmt(row.get('vs_torch'), '.2f'):>9}")
    speedup = trains[-1] / trains[0] if trains[0] and trains[-1] else None
    lines.append(f"{label:<26}" + "".join(cells) + f"{_fmt(speedup, '.2f'):>13}")
  for letter, (_, results) in zip(letters, runs):
    sources = sorted({r["torch_source"] for r in results["models"] if "torch_source" in r})
    lines.append(f"torch {letter}: {', '.join(sources) or 'none'}")
  return "\n".join(lines)
