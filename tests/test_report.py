"""The paper report from metrics files written here: known values give known table cells
and curves, missing runs read as missing, and the figures render."""

import csv
import json
import os
import shutil

import matplotlib.image
import pytest

from rethinking import report
from rethinking import sweep


def write_run(root, name, arg, rows, seed=0, **overrides):
  """A workdir as the trainer leaves it: config.json (the real config) and metrics.jsonl."""
  workdir = os.path.join(root, name, f"seed{seed}")
  os.makedirs(workdir)
  config = sweep.resolve_config("configs/cifar10.py", arg, {"seed": seed, **overrides})
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json())
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  with open(os.path.join(workdir, "run_info.json"), "w") as f:
    json.dump({"num_train": config.num_train or 50000, "steps_per_epoch": 10}, f)


def curve(num_epochs, test=0.5, train=1.0, loss0=2.3, fit_epoch=None):
  """Rows of a run: loss halving each epoch, test accuracy rising to `test` at the end."""
  rows = []
  for e in range(1, num_epochs + 1):
    acc = test * e / num_epochs
    # A run that fits at `fit_epoch` is below every fit threshold until then.
    train_acc = train if fit_epoch is None or e >= fit_epoch else 0.9
    rows.append({"epoch": e, "step": 10 * e, "train_loss": loss0 / 2 ** e,
                 "train_accuracy": train_acc, "train_eval_accuracy": train_acc,
                 "test_accuracy": acc,
                 "best_test_accuracy": acc, "test_top5_accuracy": min(1.0, 2 * acc)})
    if e == fit_epoch:
      rows[-1]["fit_step"] = 10 * e
      break
  return rows


def table_rows(path):
  """The Markdown table at `path` as {first cells joined by '|': [cells]}."""
  with open(path) as f:
    lines = [l for l in f if l.startswith("| ") and "---" not in l][1:]
  return [[c.strip() for c in l.strip().strip("|").split("|")] for l in lines]


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
  """One report, written once, of runs with known numbers."""
  tmp_path = tmp_path_factory.mktemp("report")
  root = tmp_path / "runs"
  # Table 1: MLP 1x512 on true labels, two finished seeds and one still training.
  write_run(root, "mlp", "model=mlp_1x512", curve(3, test=0.50), seed=0, num_epochs=3)
  write_run(root, "mlp", "model=mlp_1x512", curve(3, test=0.60, train=0.98), seed=1,
            num_epochs=3)
  write_run(root, "mlp", "model=mlp_1x512", curve(2, test=0.99), seed=2, num_epochs=3)
  # Table 4: AlexNet, random labels, weight decay.
  write_run(root, "alex_wd", "model=alexnet_small,corruption=random_labels,wd",
            curve(2, test=0.1, train=0.3), num_epochs=2)
  # Figure 1b/1c: MLP at p = 0 (fit at steps 40 and 60), p = 0.5 (fit at 100; one seed
  # never fits), p = 1 (fit at 150).
  write_run(root, "p0", "model=mlp_1x512,p=0.0,fit", curve(9, 0.4, fit_epoch=4), num_epochs=9)
  write_run(root, "p0", "model=mlp_1x512,p=0.0,fit", curve(9, 0.6, fit_epoch=6), seed=1,
            num_epochs=9)
  write_run(root, "p5", "model=mlp_1x512,p=0.5,fit", curve(20, 0.3, fit_epoch=10),
            num_epochs=20)
  write_run(root, "p5", "model=mlp_1x512,p=0.5,fit", curve(20, 0.3, train=0.9), seed=1,
            num_epochs=20)
  write_run(root, "p10", "model=mlp_1x512,p=1.0,fit", curve(20, 0.1, fit_epoch=15),
            num_epochs=20)
  # Figure 1a and Figure 2: Inception; true labels (also Table 1) and random labels.
  write_run(root, "inc", "model=inception_small", curve(8, test=0.8), num_epochs=8)
  write_run(root, "inc_rand", "model=inception_small,corruption=random_labels",
            curve(4, test=0.1, loss0=0.1), num_epochs=4)
  write_run(root, "inc_gauss", "model=inception_small,corruption=gaussian_pixels",
            curve(4, test=0.1, loss0=0.1), num_epochs=4)
  out = tmp_path / "report"
  assert report.write_report(str(root), str(out)) == str(out / "index.md")
  return out


def test_table1_cells_average_finished_seeds_and_say_missing(out):
  rows = {tuple(r[:4]): r[4:] for r in table_rows(out / "table1.md")}
  assert len(rows) == 19
  # Train 100 and 98, test 50 and 60 (the unfinished seed's 99 left out).
  assert rows["mlp_1x512", "no", "no", "true"] == [
      "100.00", "99.00 ± 1.41", "50.51", "55.00 ± 7.07", "2 (+1 unfinished)"]
  assert rows["inception_small", "no", "no", "true"] == [
      "100.00", "100.00", "85.75", "80.00", "1"]
  assert rows["alexnet_small", "yes", "yes", "true"] == [
      "99.90", "missing", "81.22", "missing", "0"]
  cells = read_csv(out / "table1.csv")
  mlp = next(c for c in cells if c["model"] == "mlp_1x512" and c["labels"] == "true"
             and c["wd"] == "no")
  assert float(mlp["test mean"]) == pytest.approx(0.55) and mlp["test n"] == "2"
  missing = next(c for c in cells if c["model"] == "alexnet_small" and c["crop"] == "yes")
  assert missing["test mean"] == "" and missing["runs"] == "0"


def test_table4_keeps_the_papers_notes(out):
  rows = {tuple(r[:3]): r[3:] for r in table_rows(out / "table4.md")}
  assert rows["alexnet_small", "none", "yes"] == ["failed to converge", "30.00", "1"]
  assert rows["mlp_1x512", "none", "yes"] == ["99.21", "missing", "0"]


def test_table2_without_imagenet_runs_is_all_missing(out):
  rows = table_rows(out / "table2.md")
  assert len(rows) == 7 and all(r[-1] == "0" for r in rows)
  assert all(c == "missing" for r in rows for c in r[5:-1:2])


def test_figure1bc_relative_time_and_test_error(out):
  # Time at p = 0 is the mean of 40 and 60 steps: 50.
  times = {(r["p"], r["seed"]): r for r in read_csv(out / "figure1b.csv")}
  assert float(times["0.0", "0"]["relative_time"]) == pytest.approx(0.8)
  assert float(times["0.5", "0"]["relative_time"]) == pytest.approx(2.0)
  assert times["0.5", "1"]["relative_time"] == "" and times["0.5", "1"]["steps_to_threshold"] == ""
  assert float(times["1.0", "0"]["relative_time"]) == pytest.approx(3.0)
  errors = {(r["p"], r["seed"]): float(r["test_error"]) for r in read_csv(out / "figure1c.csv")}
  # Fit at epoch 4 of 9 with test accuracy 0.4 * 4 / 9.
  assert errors["0.0", "0"] == pytest.approx(1 - 0.4 * 4 / 9)
  assert errors["1.0", "0"] == pytest.approx(1 - 0.1 * 15 / 20)
  rows = {(r[0], r[1]): r[2:] for r in table_rows(out / "figure1bc.md")}
  assert rows["mlp_1x512", "1.0"][:3] == ["2.00", "3.00", "3.00"]
  assert rows["mlp_1x512", "0.5"][1] == "2.00 (1 of 2 runs); 1 not reached in 20 epochs"
  assert rows["mlp_1x512", "0.3"] == ["—", "missing", "missing", "—", "missing", "0"]
  assert rows["inception_small", "0.0"][1] == "missing"


def test_figure1a_and_figure2_curves(out):
  loss = read_csv(out / "figure1a.csv")
  assert {r["setting"] for r in loss} == {"none", "random_labels", "gaussian_pixels"}
  # Only Inception has a pixel-corruption run: the MLP's Table 1 runs are not a panel.
  assert {r["model"] for r in loss} == {"inception_small"}
  rand = [float(r["train_loss"]) for r in loss if r["setting"] == "random_labels"]
  assert rand == [0.1 / 2 ** e for e in range(1, 5)]
  steps = {(r[0], r[1]): r[2:] for r in table_rows(out / "figure1a.md")}
  inc = "inception_small"
  assert steps[inc, "random labels"] == ["14.5", "0.04", "1"]  # 0.1 / 2**4 < 0.01 at step 40.
  assert steps[inc, "true labels"] == ["4.7", "0.08", "1"]  # 2.3 / 2**8 < 0.01 at step 80.
  assert steps[inc, "gaussian"] == ["8.6", "0.04", "1"]
  assert steps[inc, "random pixels"] == ["9.4", "missing", "0"]
  acc = [r for r in read_csv(out / "figure2.csv") if r["model"] == "inception_small"]
  assert [r["best"] for r in acc] == ["False"] * 7 + ["True"]
  assert not any(r["model"] == "inception_small_nobn" for r in read_csv(out / "figure2.csv"))


def test_figures_render_and_index_shows_everything(out):
  for name in ("figure1a", "figure1b", "figure1c", "figure2"):
    path = out / f"{name}.png"
    assert path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (400, 600) and image[..., :3].std() > 0.05  # Not blank.
  index = (out / "index.md").read_text()
  for name in ("figure1a.png", "figure1b.png", "figure1c.png", "figure2.png", "table1.md",
               "Table 2", "Table 4", "figure1b.csv"):
    assert name in index
  assert "12 runs under" in index and "(11 finished)" in index


def test_empty_root_gives_missing_tables_and_no_figures(tmp_path):
  index = report.write_report(str(tmp_path / "none"), str(tmp_path / "out"))
  text = open(index).read()
  assert text.count("No runs yet: `python -m rethinking.sweep --sweep=") == 4
  assert not list((tmp_path / "out").glob("*.png"))
  assert all(r[5] == "missing" for r in table_rows(tmp_path / "out" / "table1.md"))


def test_a_report_rewritten_in_place_drops_figures_of_runs_gone(tmp_path):
  root, out = tmp_path / "runs", tmp_path / "out"
  write_run(root, "inc", "model=inception_small", curve(4), num_epochs=4)
  write_run(root, "p0", "model=mlp_1x512,p=0.0,fit", curve(9, fit_epoch=4), num_epochs=9)
  report.write_report(str(root), str(out))
  assert {"figure2.png", "figure2.md", "figure1b.png", "figure1bc.md"} <= set(os.listdir(out))
  shutil.rmtree(root / "inc")
  report.write_report(str(root), str(out))
  left = set(os.listdir(out))
  assert not {"figure2.png", "figure2.csv", "figure2.md", "figure2_table.csv"} & left
  assert {"figure1b.png", "figure1bc.md", "table1.md"} <= left  # Still backed by a run.


def test_runs_not_made_by_a_sweep_are_placed_or_listed(tmp_path):
  """The quickstart run (random labels, stopped at its fit target, the bundled sample) is
  Table 1's mlp_1x512 random-labels row at a smaller size, and Figure 1c's p = 1 point;
  a run that fits no paper setting is listed with its setting, never silently missing."""
  root = tmp_path / "runs"
  write_run(root, "quickstart", "quickstart", curve(14, test=0.11, fit_epoch=14),
            num_epochs=40)
  with open(root / "quickstart" / "seed0" / "run_info.json", "w") as f:
    json.dump({"num_train": 1000, "steps_per_epoch": 8}, f)  # As the real run writes it.
  write_run(root, "odd", "model=mlp_1x512,augment=full", curve(2, test=0.3), num_epochs=2)
  index = report.write_report(str(root), str(tmp_path / "out"))
  rows = {tuple(r[:4]): r for r in table_rows(tmp_path / "out" / "table1.md")}
  row = rows["mlp_1x512", "no", "no", "random"]
  assert row[5] == "100.00" and row[7] == "11.00"  # train (ours), test (ours)
  assert row[-1] == "1 (smaller: 1000 images, cifar10_sample)"
  f1bc = {(r[0], r[1]): r for r in table_rows(tmp_path / "out" / "figure1bc.md")}
  assert f1bc["mlp_1x512", "1.0"][6] == "89.0"  # test error (ours), at p = 1
  assert "no p = 0 run" in f1bc["mlp_1x512", "1.0"][3]
  text = open(index).read()
  assert "### Runs not placed" in text and "1 finished runs" in text
  assert "odd/seed0`: model=mlp_1x512, augment=full" in text
  assert "quickstart/seed0" not in text.split("### Runs not placed")[1]


def test_time_to_fit_is_read_at_the_threshold_and_at_100_percent(tmp_path):
  """Figure 1b's points are steps to `fit_threshold` train accuracy; a run that tops out
  below 100% (as mlp_1x512 on random labels at paper scale: 98.6%) still has one."""
  root = tmp_path / "runs"

  def rows(accuracies):
    return [{"epoch": e, "step": 10 * e, "train_loss": 1.0, "train_accuracy": a,
             "train_eval_accuracy": a, "test_accuracy": 0.3, "best_test_accuracy": 0.3}
            for e, a in enumerate(accuracies, start=1)]

  write_run(root, "p0", "model=mlp_1x512,p=0.0,fit", rows([0.5, 0.985, 0.99, 1.0]),
            num_epochs=4)
  write_run(root, "p1", "model=mlp_1x512,p=1.0,fit", rows([0.3, 0.6, 0.9, 0.97, 0.981, 0.986]),
            num_epochs=6)
  report.write_report(str(root), str(tmp_path / "out"), fit_threshold=0.98)
  times = {r["p"]: r for r in read_csv(tmp_path / "out" / "figure1b.csv")}
  assert times["0.0"]["steps_to_threshold"] == "20" and times["0.0"]["steps_to_100"] == "40"
  assert times["1.0"]["steps_to_threshold"] == "50" and times["1.0"]["steps_to_100"] == ""
  assert float(times["1.0"]["relative_time"]) == pytest.approx(2.5)
  table = {(r[0], r[1]): r[2:] for r in table_rows(tmp_path / "out" / "figure1bc.md")}
  assert table["mlp_1x512", "1.0"][1:3] == [
      "2.50", "missing (0 of 1 runs); 1 not reached in 6 epochs"]
  assert report.steps_to_accuracy(report.runs_lib.read_run(str(root / "p0" / "seed0")), 1.0) == 40


def test_figure1a_has_a_panel_per_model_with_pixel_runs(tmp_path):
  """Figure 1a of another model (the CPU scale's is mlp_1x512) sits beside Inception's,
  each setting read per model (a mix-up of models would swap the step counts)."""
  root = tmp_path / "runs"
  for model, loss0 in (("inception_small", 2.3), ("alexnet_small", 0.1)):
    for corruption in ("none", "shuffled_pixels"):
      write_run(root, f"{model}-{corruption}", f"model={model},corruption={corruption}",
                curve(9, loss0=loss0), num_epochs=9)
  write_run(root, "mlp", "model=mlp_1x512", curve(9), num_epochs=9)  # Table 1 only.
  out = tmp_path / "out"
  report.write_report(str(root), str(out))
  steps = {(r[0], r[1]): r[3] for r in table_rows(out / "figure1a.md")}
  assert steps == {(m, s): v for m, v in (("inception_small", "0.08"), ("alexnet_small", "0.04"))
                   for s in ("true labels", "shuffled pixels")} | {
      (m, s): "missing" for m in ("inception_small", "alexnet_small")
      for s in ("random labels", "random pixels", "gaussian")}
  assert matplotlib.image.imread(out / "figure1a.png").shape[:2] == (400, 1200)


def test_time_to_fit_reads_one_metric_when_the_train_set_pass_is_sparse(tmp_path):
  """With eval_train_every_epochs=2 the odd epochs have only the running accuracy; it is
  not mixed with the eval-mode one (it crossed 0.9 at epoch 3, the eval pass at 4)."""
  rows = [{"epoch": e, "step": 10 * e, "train_loss": 1.0, "train_accuracy": a,
           "test_accuracy": 0.3} for e, a in enumerate([0.5, 0.8, 0.95, 0.97], start=1)]
  rows[1]["train_eval_accuracy"], rows[3]["train_eval_accuracy"] = 0.85, 0.99
  write_run(tmp_path, "sparse", "model=mlp_1x512,p=0.0,fit", rows, num_epochs=4)
  run = report.runs_lib.read_run(str(tmp_path / "sparse" / "seed0"))
  assert report.steps_to_accuracy(run, 0.9) == 40
  for r in rows:
    r.pop("train_eval_accuracy", None)
  write_run(tmp_path, "running", "model=mlp_1x512,p=0.0,fit", rows, num_epochs=4)
  run = report.runs_lib.read_run(str(tmp_path / "running" / "seed0"))
  assert report.steps_to_accuracy(run, 0.9) == 30  # No eval pass at all: the running one.
