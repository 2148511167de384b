r"""The paper report: our numbers beside the paper's, from the runs under a root.

  python -m rethinking.report --root=/tmp/f1bc --out=/tmp/f1bc/report

Reads every run (config.json, metrics.jsonl, run_info.json) under --root, whichever
sweep made it, places it by its config in the paper's tables and figures, and writes to
--out: table1.md, table2.md, table4.md and figure1bc.md; figure1a.png (training loss
against steps), figure1b.png (time to overfit relative to p = 0), figure1c.png (test
error at convergence), figure2.png (test accuracy with and without BatchNorm, early-
stopping best marked); a CSV behind each; and index.md, which shows them all.

Table cells average the finished runs of a cell over seeds: mean ± std, with the number
of runs beside. A cell without a finished run reads "missing", never a number. Curves
(Figures 1a, 2) also show runs still training. Runs need not come from a sweep: any run
is placed by its config (`random_labels` is p = 1; a run that stopped at its fit target
still fills Table 1), rows with runs smaller than the paper's (a subset, smaller images,
a local file) are marked, and every finished run that fits nowhere is listed at the end
of index.md with its setting.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics
from typing import Any, Callable

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from rethinking import paper
from rethinking import runs as runs_lib
from rethinking.runs import Run


FLAGS = flags.FLAGS
MISSING = "missing"
COLORS = {"inception_small": "C0", "alexnet_small": "C1", "mlp_1x512": "C2",
          "inception_small_nobn": "C3"}
# Label settings on Figure 1b/1c's p axis (true labels are p = 0, random labels p = 1).
_LABEL_SETTINGS = ("none", "partial_labels", "random_labels")
FIGURE1A_LABELS = {"none": "true labels", "random_labels": "random labels",
                   "shuffled_pixels": "shuffled pixels", "random_pixels": "random pixels",
                   "gaussian_pixels": "gaussian"}


# --- Which paper setting a run is --------------------------------------------------


def setting(run: Run) -> dict[str, Any]:
  """The parts of a run's config that place it in the paper's tables and figures.

  `p` is the label corruption probability: 1 for random labels, 0 for true ones.
  """
  c = run.config
  p = {"random_labels": 1.0, "none": 0.0}.get(c["corruption"], c.get("corrupt_prob", 0.0))
  return {"imagenet": c.get("pipeline") == "imagenet", "model": c["model"],
          "augment": c.get("augment", "none"), "wd": c.get("weight_decay", 0) > 0,
          "dropout": c.get("dropout_rate", 0) > 0, "corruption": c["corruption"],
          "p": round(p, 2), "fit": c.get("stop_at_train_accuracy", 0) > 0}


def reduced(run: Run) -> str:
  """How a run is smaller than the paper's (e.g. '1000 images'), or '' for paper scale."""
  c, parts = run.config, []
  full_dataset = c.get("dataset") in ("cifar10", "imagenet2012")
  if c.get("num_train") or not full_dataset:
    parts.append(f"{run.info.get('num_train', c.get('num_train')) or 'all'} images")
  if c.get("pipeline") != "imagenet" and c.get("image_size", 28) != 28:
    parts.append(f"{c['image_size']} px")
  if not full_dataset:
    parts.append(os.path.basename(str(c.get("dataset"))))
  return ", ".join(parts)


def select(runs: list[Run], **wanted) -> list[Run]:
  """The runs whose setting has every wanted value (plain CIFAR-10 runs unless told)."""
  wanted = {"imagenet": False, "dropout": False, "fit": False, **wanted}
  return [r for r in runs if all(setting(r)[k] == v for k, v in wanted.items())]


# --- Numbers of a run ----------------------------------------------------------------


def train_accuracy(run: Run) -> float | None:
  """Accuracy on the training set (labels as trained on): the eval-mode pass if there is one."""
  return _first(run.last, "train_eval_accuracy", "train_accuracy")


def train_top5_accuracy(run: Run) -> float | None:
  return _first(run.last, "train_eval_top5_accuracy", "train_top5_accuracy")


def _first(row: dict, *keys) -> Any:
  return next((row[k] for k in keys if row.get(k) is not None), None)


def _metric(key: str) -> Callable[[Run], Any]:
  return lambda run: run.last.get(key)


def test_error(run: Run) -> float | None:
  acc = run.last.get("test_accuracy")
  return None if acc is None else 1.0 - acc


def steps_to_accuracy(run: Run, threshold: float) -> int | None:
  """Time to fit at `threshold`: the first epoch-end step whose training-set accuracy
  (the eval-mode pass where the run has one) reaches it; None if no epoch did. One
  metric per run: with `eval_train_every_epochs` > 1 the epochs between passes have
  only the running accuracy, which is not compared with the eval-mode one."""
  key = ("train_eval_accuracy" if any(r.get("train_eval_accuracy") is not None
                                      for r in run.rows) else "train_accuracy")
  return next((r["step"] for r in run.rows if (r.get(key) or 0) >= threshold), None)


def loss_below_step(run: Run, threshold: float = paper.FIGURE1A_LOSS_THRESHOLD) -> int | None:
  """The first epoch-end step whose running train loss is below the threshold."""
  return next((r["step"] for r in run.rows if r.get("train_loss", 1e9) < threshold), None)


# --- Cells ---------------------------------------------------------------------------


def _pct(x: float) -> str:
  return f"{100 * x:.2f}"


def cell(values: list[float | None], fmt: Callable[[float], str] = _pct) -> str:
  """'mean ± std' of the values present; notes runs without a value; 'missing' if none."""
  present = [v for v in values if v is not None]
  if not present:
    return MISSING if not values else f"{MISSING} (0 of {len(values)} runs)"
  text = fmt(statistics.fmean(present))
  if len(present) > 1:
    text += f" ± {fmt(statistics.stdev(present))}"
  if len(present) < len(values):
    text += f" ({len(present)} of {len(values)} runs)"
  return text


def paper_cell(value: Any, fmt: Callable[[float], str] = _pct) -> str:
  """A paper number; a string is a note ('failed to converge'); None: not given."""
  return "—" if value is None else value if isinstance(value, str) else fmt(value)


def runs_cell(done: list[Run], every: list[Run]) -> str:
  """How many runs stand behind a row, and how many are still training."""
  unfinished = len(every) - len(done)
  return f"{len(done)}" + (f" (+{unfinished} unfinished)" if unfinished else "")


def summary(values: list[float | None]) -> dict[str, Any]:
  """mean, std and n of the values present, for the CSVs ('' where there are none)."""
  present = [v for v in values if v is not None]
  return {"n": len(present), "mean": statistics.fmean(present) if present else "",
          "std": statistics.stdev(present) if len(present) > 1 else ""}


# --- Tables --------------------------------------------------------------------------


@dataclasses.dataclass
class Table:
  """A Markdown table and the CSV rows behind it."""

  name: str
  title: str
  header: list[str]
  rows: list[list[str]]
  csv_rows: list[dict[str, Any]]
  note: str = ""
  placed: list[Run] = dataclasses.field(default_factory=list)  # The runs shown in it.

  def markdown(self) -> str:
    lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
             "|" + "---|" * len(self.header)]
    lines += ["| " + " | ".join(row) + " |" for row in self.rows]
    return "\n".join(lines + ([""] + [self.note] if self.note else [])) + "\n"


@dataclasses.dataclass
class Metric:
  """A column pair of a table: the paper's value (index into a paper row) and ours."""

  title: str
  ours: Callable[[Run], float | None]
  paper_index: int | None = None


def paper_table(name: str, title: str, runs: list[Run], paper_rows: dict, labels: list[str],
                label_values: Callable[[tuple], list[str]], match: Callable[[tuple], list[Run]],
                metrics: list[Metric], note: str = "") -> Table:
  """One row per paper row: its label columns, then paper and ours per metric, then runs."""
  header = labels + [f"{m.title} {who}" for m in metrics for who in ("(paper)", "(ours)")]
  table = Table(name, title, header + ["runs"], [], [], note)
  for key, paper_values in paper_rows.items():
    every = match(key)
    done = [r for r in every if r.finished]
    row = label_values(key)
    csv_row = dict(zip(labels, row))
    for m in metrics:
      paper_value = paper_values if m.paper_index is None else paper_values[m.paper_index]
      ours = [m.ours(r) for r in done]
      row += [paper_cell(paper_value), cell(ours)]
      csv_row.update({f"{m.title} paper": paper_value if paper_value is not None else "",
                      **{f"{m.title} {k}": v for k, v in summary(ours).items()}})
    smaller = sorted({reduced(r) for r in every} - {""})
    table.rows.append(row + [runs_cell(done, every) + (f" (smaller: {'; '.join(smaller)})"
                                                       if smaller else "")])
    table.csv_rows.append(dict(csv_row, runs=len(done), unfinished=len(every) - len(done),
                               smaller="; ".join(smaller)))
    table.placed += every
  return table


def _yes(flag: bool) -> str:
  return "yes" if flag else "no"


def table1(runs: list[Run]) -> Table:
  def label_values(key):
    model, augment, wd, corruption = key
    return [model, _yes(augment == "crop"), _yes(wd),
            "random" if corruption == "random_labels" else "true"]

  def match(key):  # A run stopped at 100% train accuracy is a Table 1 run that ended early.
    model, augment, wd, corruption = key
    return [r for fit in (False, True)
            for r in select(runs, model=model, augment=augment, wd=wd, corruption=corruption,
                            fit=fit)]

  return paper_table(
      "table1", "Table 1: CIFAR-10 train and test accuracy (%)", runs, paper.TABLE1,
      ["model", "crop", "wd", "labels"], label_values, match,
      [Metric("train", train_accuracy, 0), Metric("test", _metric("test_accuracy"), 1)])


def table2(runs: list[Run]) -> Table:
  def label_values(key):
    return [key[0]] + [_yes(flag) for flag in key[1:]]

  def match(key):
    labels, aug, dropout, wd = key
    return [r for r in runs if setting(r)["imagenet"] and setting(r)["wd"] == wd
            and setting(r)["dropout"] == dropout and (setting(r)["augment"] != "none") == aug
            and (setting(r)["corruption"] == "random_labels") == (labels == "random")]

  return paper_table(
      "table2", "Table 2: ImageNet, Inception V3, accuracy (%)", runs, paper.TABLE2,
      ["labels", "aug", "dropout", "wd"], label_values, match,
      [Metric("top-1 train", train_accuracy, 0), Metric("top-5 train", train_top5_accuracy, 1),
       Metric("top-1 test", _metric("test_accuracy"), 2),
       Metric("top-5 test", _metric("test_top5_accuracy"), 3),
       Metric("best top-1 test", _metric("best_test_accuracy"), 4)],
      note="Best top-1 test: the best epoch's (early stopping); the paper gives it in "
           "parentheses for two rows.")


def table4(runs: list[Run]) -> Table:
  def match(key):
    model, augment, wd = key
    return select(runs, model=model, augment=augment, wd=wd, corruption="random_labels")

  return paper_table(
      "table4", "Table 4 (Appendix E): random labels with regularizers, train accuracy (%)",
      runs, paper.TABLE4, ["model", "augment", "wd"],
      lambda key: [key[0], key[1], _yes(key[2])], match, [Metric("train", train_accuracy)])


# --- Figures -------------------------------------------------------------------------


def _save(fig, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_curve(ax, run: Run, key: str, color: str, label: str | None) -> list[dict]:
  """Plots `key` of each epoch row against thousands of steps; returns the points."""
  points = [{"seed": run.config["seed"], "step": r["step"], key: r[key]} for r in run.rows]
  ax.plot([p["step"] / 1000 for p in points], [p[key] for p in points], color=color,
          label=label)
  return points


FIGURE1A_MODELS = ("inception_small", "alexnet_small", "mlp_1x512", "mlp_3x512")


def figure1a(runs: list[Run], out: str) -> tuple[list[dict], Table] | None:
  """Training loss against thousands of steps, the five settings, one panel per model.

  The paper's figure is Inception's; the CPU scale runs it on inception_small and
  mlp_1x512 (sizes and why: configs/sweeps.py).
  """
  by_model = {m: {c: select(runs, model=m, augment="none", wd=False, corruption=c)
                  for c in FIGURE1A_LABELS} for m in FIGURE1A_MODELS}
  # A model's panel needs a pixel-corruption run, which only Figure 1a's sweep makes
  # (Table 1's true- and random-label runs alone are not the figure).
  by_model = {m: s for m, s in by_model.items()
              if any(r.rows for c, rs in s.items() if c.endswith("_pixels") for r in rs)}
  if not by_model:
    return None
  fig, axes = plt.subplots(1, len(by_model), figsize=(6 * len(by_model), 4), squeeze=False)
  points, table = [], Table("figure1a", "Figure 1a: thousands of steps until the training "
                            "loss is below 0.01 (epoch-end running loss)",
                            ["model", "setting", "paper (Inception)", "ours", "runs"], [], [])
  for ax, (model, by_setting) in zip(axes[0], by_model.items()):
    for i, (corruption, rs) in enumerate(by_setting.items()):
      for j, run in enumerate(rs):
        curve = _plot_curve(ax, run, "train_loss", f"C{i}",
                            FIGURE1A_LABELS[corruption] if j == 0 else None)
        points += [{"model": model, "setting": corruption, **point} for point in curve]
      table.placed += rs
      done = [r for r in rs if r.finished]
      reached = [loss_below_step(r) for r in done]
      table.rows.append([model, FIGURE1A_LABELS[corruption],
                         paper_cell(paper.FIGURE1A_KSTEPS[corruption], lambda x: f"{x:.1f}"),
                         cell([None if s is None else s / 1000 for s in reached],
                              lambda x: f"{x:.2f}"), runs_cell(done, rs)])
    ax.set(xlabel="thousand steps", ylabel="average training loss",
           title=f"Figure 1a: {model} on CIFAR-10")
    ax.legend()
  _save(fig, os.path.join(out, "figure1a.png"))
  return points, table


def figure1bc(runs: list[Run], out: str, threshold: float = paper.FIT_THRESHOLD
              ) -> tuple[list[dict], list[dict], Table] | None:
  """Time to fit relative to p = 0 (1b) and test error at convergence (1c) against p.

  Time to fit is `steps_to_accuracy(run, threshold)`: Figure 1b's points are at
  `threshold`, and where that is below 100% the 100% points are drawn too (hollow).
  """
  done = {(m, p): [r for r in select(runs, model=m, augment="none", wd=False, p=p, fit=True)
                   if r.finished and r.config["corruption"] in _LABEL_SETTINGS]
          for m in paper.FIGURE1B for p in paper.CORRUPTION_LEVELS}
  if not any(done.values()):
    return None
  pct = f"{100 * threshold:g}%"
  fit_b, fit_c, table = [], [], Table(
      "figure1bc", f"Figures 1b and 1c: time to fit (steps until train accuracy >= {pct}) "
      "relative to p = 0, and test error at convergence (%), against label corruption p",
      ["model", "p", "time to fit (paper)", f"time to {pct} (ours)", "time to 100% (ours)",
       "test error (paper)", "test error (ours)", "runs"], [], [])
  table.placed += [r for rs in done.values() for r in rs]
  fig_b, ax_b = plt.subplots(figsize=(6, 4))
  fig_c, ax_c = plt.subplots(figsize=(6, 4))
  thresholds = sorted({threshold, 1.0})
  for m in paper.FIGURE1B:
    base = {t: _mean_present([steps_to_accuracy(r, t) for r in done[m, 0.0]])
            for t in thresholds}
    curve_b = {t: [] for t in thresholds}
    curve_c = []
    for i, p in enumerate(paper.CORRUPTION_LEVELS):
      rs = done[m, p]
      steps = {t: [steps_to_accuracy(r, t) for r in rs] for t in thresholds}
      ratios = {t: [s / base[t] if s and base[t] else None for s in steps[t]]
                for t in thresholds}
      errors = [test_error(r) for r in rs]
      for k, (r, error) in enumerate(zip(rs, errors)):
        common = {"model": m, "p": p, "seed": r.config["seed"]}
        fit_b.append({**common, "fit_threshold": threshold,
                      "steps_to_threshold": steps[threshold][k] or "",
                      "p0_steps_mean": base[threshold] or "",
                      "relative_time": ratios[threshold][k] or "",
                      "steps_to_100": steps[1.0][k] or "", "relative_time_100": ratios[1.0][k] or "",
                      "paper": paper.FIGURE1B[m][i] or ""})
        fit_c.append({**common, "test_error": error, "fitted": steps[threshold][k] is not None,
                      "paper": paper.FIGURE1C[m][i] or ""})
      for t in thresholds:
        curve_b[t].append((p, summary(ratios[t])))
      curve_c.append((p, summary(errors)))
      texts = []
      for t in (threshold, 1.0):
        text = cell(ratios[t], lambda x: f"{x:.2f}")
        unfit = sum(s is None for s in steps[t])
        if rs and base[t] is None:  # Time to fit is relative to p = 0: say what is needed.
          text = f"no p = 0 run to compare with (step {steps[t][0] or '-'})"
        elif unfit:
          text += f"; {unfit} not reached in {rs[0].config['num_epochs']} epochs"
        texts.append(text)
      table.rows.append([m, f"{p:.1f}", paper_cell(paper.FIGURE1B[m][i], lambda x: f"{x:.2f}"),
                         *texts, paper_cell(paper.FIGURE1C[m][i], lambda x: f"{100 * x:.1f}"),
                         cell(errors, lambda x: f"{100 * x:.1f}"), str(len(rs))])
    _plot_against_p(ax_b, m, curve_b[threshold], paper.FIGURE1B[m], f"ours, {pct}")
    if threshold < 1.0:
      _plot_against_p(ax_b, m, curve_b[1.0], None, "ours, 100%", hollow=True)
    _plot_against_p(ax_c, m, curve_c, paper.FIGURE1C[m])
  ax_b.set(xlabel="label corruption p", ylabel=f"steps to {pct} train accuracy / at p = 0",
           title="Figure 1b: time to fit")
  ax_c.set(xlabel="label corruption p", ylabel="test error at convergence", ylim=(0, 1),
           title="Figure 1c: test error")
  ax_c.axhline(0.9, color="gray", lw=0.8, ls=":", label="chance")
  for fig, ax, name in ((fig_b, ax_b, "figure1b"), (fig_c, ax_c, "figure1c")):
    ax.legend(fontsize=7)
    _save(fig, os.path.join(out, f"{name}.png"))
  return fit_b, fit_c, table


def _mean_present(values: list[float | None]) -> float | None:
  present = [v for v in values if v]
  return statistics.fmean(present) if present else None


def _plot_against_p(ax, model: str, curve: list, paper_values: tuple | None,
                    label: str = "ours", hollow: bool = False) -> None:
  """Ours (mean ± std over seeds; missing points left out) solid, the paper's dashed."""
  ours = [(p, s["mean"], s["std"] or 0.0) for p, s in curve if s["n"]]
  if ours:
    ax.errorbar(*zip(*ours), color=COLORS[model], marker="o", ms=4, capsize=2,
                mfc="none" if hollow else COLORS[model], ls=":" if hollow else "-",
                label=f"{model} ({label})")
  if paper_values is None:
    return
  given = [(p, v) for p, v in zip(paper.CORRUPTION_LEVELS, paper_values) if v is not None]
  ax.plot(*zip(*given), color=COLORS[model], ls="--" if len(given) > 2 else "none",
          marker="x", alpha=0.6, label=f"{model} (paper)")


def figure2(runs: list[Run], out: str) -> tuple[list[dict], Table] | None:
  """Test accuracy over training, Inception with and without BatchNorm; best marked."""
  by_model = {m: select(runs, model=m, augment="none", wd=False, corruption="none")
              for m in paper.FIGURE2}
  if not any(r.rows for rs in by_model.values() for r in rs):
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  points, table = [], Table("figure2", "Figure 2b: test accuracy (%) with and without "
                            "BatchNorm; best = early stopping",
                            ["model", "final (paper)", "final (ours)", "best (ours)", "runs"],
                            [], [])
  for model, rs in by_model.items():
    for j, run in enumerate(rs):
      curve = _plot_curve(ax, run, "test_accuracy", COLORS[model], model if j == 0 else None)
      best = max(range(len(curve)), key=lambda k: curve[k]["test_accuracy"], default=None)
      if best is not None:
        ax.plot(curve[best]["step"] / 1000, curve[best]["test_accuracy"], "*", ms=12,
                color=COLORS[model],
                label="early-stopping best" if model == "inception_small" and j == 0 else None)
      points += [{"model": model, **point, "best": k == best} for k, point in enumerate(curve)]
    ax.axhline(paper.FIGURE2[model], color=COLORS[model], ls="--", lw=0.8)
    table.placed += rs
    done = [r for r in rs if r.finished]
    table.rows.append([model, paper_cell(paper.FIGURE2[model]),
                       cell([r.last.get("test_accuracy") for r in done]),
                       cell([r.last.get("best_test_accuracy") for r in done]),
                       runs_cell(done, rs)])
  ax.set(xlabel="thousand steps", ylabel="test accuracy",
         title="Figure 2b: Inception with and without BatchNorm (dashed: paper, final)")
  ax.legend(fontsize=8)
  _save(fig, os.path.join(out, "figure2.png"))
  return points, table


# --- Writing -------------------------------------------------------------------------


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  fields = list(dict.fromkeys(k for row in rows for k in row))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _scale_note(runs: list[Run]) -> str:
  """Which data sizes the runs trained on, per model (runlocal runs are tiny)."""
  sizes: dict[str, set] = {}
  for r in runs:
    n = r.info.get("num_train", r.config.get("num_train"))
    sizes.setdefault(r.config["model"], set()).add(
        f"{n or 'all'} images at {r.config.get('image_size')} px")
  return "; ".join(f"{m}: {', '.join(sorted(s))}" for m, s in sorted(sizes.items()))


def _unplaced_section(runs: list[Run], placed: set[str]) -> list[str]:
  """Every finished run that no table or figure shows, with the setting that kept it out."""
  unplaced = [r for r in runs if r.finished and r.workdir not in placed]
  if not unplaced:
    return []
  lines = ["### Runs not placed", "",
           f"{len(unplaced)} finished runs match no row of the paper's tables or figures "
           "(Table 1: no augmentation other than crop, no dropout; Figures 1b/1c: stopped at "
           "a fit target, no regularizer, one of the three models; Figure 1a and 2: "
           "Inception(s) without regularizers):", ""]
  for r in unplaced:
    s = setting(r)
    why = ", ".join(f"{k}={s[k]}" for k in ("model", "augment", "wd", "dropout", "corruption",
                                            "p", "fit"))
    lines.append(f"- `{r.workdir}`: {why}" + (f" ({reduced(r)})" if reduced(r) else ""))
  return lines + [""]


def write_report(root: str, out: str, fit_threshold: float = paper.FIT_THRESHOLD) -> str:
  """Writes the report of the runs under `root` to `out`; returns the path of index.md.

  `fit_threshold`: the train accuracy that defines Figure 1b's time to fit.
  """
  os.makedirs(out, exist_ok=True)
  runs = [r for r in runs_lib.find_runs(root)
          if not os.path.abspath(r.workdir).startswith(os.path.abspath(out) + os.sep)]
  finished = sum(r.finished for r in runs)
  index = ["# The paper report", "",
           f"{len(runs)} runs under `{root}` ({finished} finished). Trained on: "
           f"{_scale_note(runs) or 'nothing yet'}.", "",
           "Cells: mean ± std over seeds of finished runs; `runs` counts them. "
           "`missing`: no finished run; `—`: the paper gives no number.", ""]

  placed: set[str] = set()

  def add_table(table: Table, csv_name: str | None = None) -> None:
    placed.update(r.workdir for r in table.placed)
    with open(os.path.join(out, f"{table.name}.md"), "w") as f:
      f.write(table.markdown())
    write_csv(os.path.join(out, csv_name or f"{table.name}.csv"), table.csv_rows or [
        dict(zip(table.header, row)) for row in table.rows])
    index.extend([table.markdown(), f"[{table.name}.md]({table.name}.md), "
                  f"[{csv_name or table.name + '.csv'}]({csv_name or table.name + '.csv'})", ""])

  def add_figure(name: str, title: str, rows: list[dict] | None, sweep: str,
                 table_files: tuple[str, ...] = ()) -> None:
    index.append(f"### {title}\n")
    if rows is None:
      index.append(f"No runs yet: `python -m rethinking.sweep --sweep={sweep} --root={root}`\n")
      # A report rewritten in place shows no figure of runs it no longer has.
      for stale in (f"{name}.png", f"{name}.csv", *table_files):
        if os.path.exists(os.path.join(out, stale)):
          os.remove(os.path.join(out, stale))
      return
    write_csv(os.path.join(out, f"{name}.csv"), rows)
    index.append(f"![{title}]({name}.png)\n\n[{name}.csv]({name}.csv)\n")

  add_table(table1(runs))
  f1a = figure1a(runs, out)
  add_figure("figure1a", "Figure 1a: training loss", f1a and f1a[0], "figure1a",
             ("figure1a.md", "figure1a_steps.csv"))
  if f1a:
    add_table(f1a[1], "figure1a_steps.csv")
  f1bc = figure1bc(runs, out, fit_threshold)
  add_figure("figure1b", "Figure 1b: time to overfit", f1bc and f1bc[0], "figure1bc")
  add_figure("figure1c", "Figure 1c: test error at convergence", f1bc and f1bc[1], "figure1bc",
             ("figure1bc.md", "figure1bc_table.csv"))
  if f1bc:
    add_table(f1bc[2], "figure1bc_table.csv")
  f2 = figure2(runs, out)
  add_figure("figure2", "Figure 2b: implicit regularization by BatchNorm", f2 and f2[0],
             "figure2", ("figure2.md", "figure2_table.csv"))
  if f2:
    add_table(f2[1], "figure2_table.csv")
  add_table(table2(runs))
  add_table(table4(runs))
  index.extend(_unplaced_section(runs, placed))
  path = os.path.join(out, "index.md")
  with open(path, "w") as f:
    f.write("\n".join(index))
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(f"wrote {write_report(FLAGS.root, FLAGS.out, FLAGS.fit_threshold)}")


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so modules can share names)."""
  flags.DEFINE_string("root", None, "Directory holding the runs (any depth).")
  flags.DEFINE_string("out", None, "Directory for the report (index.md, tables, figures, CSVs).")
  flags.DEFINE_float("fit_threshold", paper.FIT_THRESHOLD,
                     "Train accuracy that defines Figure 1b's time to fit (100% points are "
                     "drawn too when it is lower).")
  flags.mark_flags_as_required(["root", "out"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
