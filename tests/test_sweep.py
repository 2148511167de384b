"""Sweeps: expansion into runs and configs, skipping and resuming, emitted commands, and a
runlocal sweep of two tiny real runs end to end (with the report)."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, read_metrics
from rethinking import paper
from rethinking import report
from rethinking import sweep
from rethinking.runs import Run

SIZES = {"table1": 19, "figure1a": 5, "figure1bc": 33, "figure2": 2, "table2": 7, "table4": 6}
HAS_IMAGENET = (REPO / "configs" / "imagenet.py").exists()


def _expand(name, tmp_path, **kwargs):
  if name == "table2" and not HAS_IMAGENET:
    pytest.skip("configs/imagenet.py (issue 3) is absent")
  return sweep.expand(name, str(tmp_path), **kwargs)


def _setting(job):
  return report.setting(Run(job.workdir, json.loads(job.config.to_json()), [], {}))


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_sweep_expands_to_resolved_configs(name, tmp_path):
  jobs = _expand(name, tmp_path)
  assert len(jobs) == SIZES[name]
  assert len({j.workdir for j in jobs}) == len(jobs)
  for job in jobs:
    assert job.workdir.startswith(str(tmp_path)) and job.workdir.endswith("/seed0")
    assert job.config.seed == 0


def test_tables_have_one_run_per_paper_row(tmp_path):
  """The sweeps and the report agree: each paper row is trained by exactly one run."""
  t1 = [_setting(j) for j in _expand("table1", tmp_path)]
  assert sorted((s["model"], s["augment"], s["wd"], s["corruption"]) for s in t1) == sorted(
      paper.TABLE1)
  assert not any(s["fit"] or s["dropout"] for s in t1)
  t4 = [_setting(j) for j in _expand("table4", tmp_path)]
  assert sorted((s["model"], s["augment"], s["wd"]) for s in t4) == sorted(paper.TABLE4)
  assert {s["corruption"] for s in t4} == {"random_labels"}
  full = [j for j in _expand("table4", tmp_path) if j.config.augment == "full"]
  assert full[0].config.lr_decay == 0.999
  f1bc = [_setting(j) for j in _expand("figure1bc", tmp_path)]
  assert sorted((s["model"], s["p"]) for s in f1bc) == sorted(
      (m, p) for m in paper.FIGURE1B for p in paper.CORRUPTION_LEVELS)
  assert all(s["fit"] and s["corruption"] == "partial_labels" for s in f1bc)


def test_a_run_shared_by_sweeps_has_one_workdir(tmp_path):
  table1 = {j.workdir for j in _expand("table1", tmp_path)}
  figure1a = {j.workdir for j in _expand("figure1a", tmp_path)}
  figure2 = {j.workdir for j in _expand("figure2", tmp_path)}
  assert str(tmp_path / "cifar10" / "inception_small" / "seed0") in table1 & figure1a & figure2
  assert len(figure1a - table1) == 3  # shuffled, random and gaussian pixels.


def test_table2_runs_are_the_imagenet_presets(tmp_path):
  jobs = _expand("table2", tmp_path)
  keys = [(("random" if s["corruption"] == "random_labels" else "true"),
           s["augment"] != "none", s["dropout"], s["wd"]) for s in map(_setting, jobs)]
  assert sorted(keys) == sorted(paper.TABLE2)
  assert all(j.workdir.startswith(str(tmp_path / "imagenet")) for j in jobs)


def test_table2_without_the_imagenet_config_fails_clearly(tmp_path, monkeypatch):
  (tmp_path / "configs").mkdir()
  for name in ("sweeps.py", "cifar10.py"):
    shutil.copy(REPO / "configs" / name, tmp_path / "configs" / name)
  monkeypatch.setattr(sweep, "REPO", tmp_path)
  assert len(sweep.expand("table1", str(tmp_path / "runs"))) == 19
  with pytest.raises(FileNotFoundError, match="configs/imagenet.py not found: the ImageNet"):
    sweep.expand("table2", str(tmp_path / "runs"))


def test_runlocal_shrinks_every_run(tmp_path):
  paper_jobs = _expand("figure1bc", tmp_path)
  jobs = _expand("figure1bc", tmp_path, scale="runlocal", dataset="/data/c.npz")
  assert 0 < len(jobs) <= len(paper_jobs)
  assert {j.workdir for j in jobs} <= {j.workdir for j in paper_jobs}  # Same names.
  for job in jobs:
    c = job.config
    assert 0 < c.num_train <= 10_000 and 0 < c.num_test <= 1000 and c.dataset == "/data/c.npz"
    assert c.lr_decay == pytest.approx(0.95 ** (c.num_train / 50_000), abs=1e-6)
  levels = {}
  for job in jobs:
    levels.setdefault(job.config.model, []).append(job.config.corrupt_prob)
  assert sorted(levels) == sorted(paper.FIGURE1B)
  assert levels["mlp_1x512"] == levels["alexnet_small"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
  assert levels["inception_small"] == [0.0, 0.5, 1.0]


def test_seeds_overrides_and_filters(tmp_path):
  jobs = sweep.expand("figure2", str(tmp_path), seeds=3, overrides=sweep.parse_sets(
      ["num_epochs=7", "dataset=rel/x.npz", "half_precision=True"]), only=["*nobn*"])
  assert [j.name for j in jobs] == [f"inception_small_nobn/seed{k}" for k in range(3)]
  assert [j.config.seed for j in jobs] == [0, 1, 2]
  assert {(j.config.num_epochs, j.config.dataset, j.config.half_precision)
          for j in jobs} == {(7, "rel/x.npz", True)}
  with pytest.raises(KeyError, match="no config field 'num_epoch'"):
    sweep.expand("figure2", str(tmp_path), overrides={"num_epoch": 7})
  with pytest.raises(ValueError, match="no runs of sweep 'figure2' match"):
    sweep.expand("figure2", str(tmp_path), only=["mlp*"])
  with pytest.raises(ValueError, match="unknown sweep 'table3'"):
    sweep.expand("table3", str(tmp_path))


def test_emitted_commands_and_slurm_script(tmp_path):
  jobs = sweep.expand("table4", str(tmp_path), seeds=2)
  cmd = jobs[-1].command()
  assert cmd[:4] == ["python", "-m", "rethinking.main", "--config=configs/cifar10.py:"
                     "model=inception_small,corruption=random_labels,augment=full"]
  assert cmd[5:] == ["--config.lr_decay=0.999", "--config.seed=1"]
  script = sweep.slurm_script(jobs, "table4", str(tmp_path))
  assert "#SBATCH --array=0-11" in script and script.count(") TASK=(") == 12
  # The shared template: environment, requeue, a warning before the time limit, exit 75.
  for line in ("#SBATCH --requeue", "#SBATCH --signal=TERM@120", "activate_env",
               'if [[ $rc == 75 ]]; then'):
    assert line in script
  # ImageNet runs (Table 2) get a node's 8 GPUs per array task, one process.
  table2 = sweep.slurm_script(sweep.expand("table2", str(tmp_path)), "table2", str(tmp_path))
  assert "#SBATCH --gpus-per-node=8\n" in table2 and "#SBATCH --gres=gpu:1" not in table2
  assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
  proc = subprocess.run([sys.executable, "-m", "rethinking.sweep", "--sweep=table4",
                         f"--root={tmp_path}", "--emit=slurm"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "table4.sbatch").read_text().count(") TASK=(") == 6
  assert (tmp_path / "slurm").is_dir()  # For the logs: SLURM does not create it.


def _fake_workdir(job, rows):
  os.makedirs(job.workdir, exist_ok=True)
  pathlib.Path(job.workdir, "config.json").write_text(job.config.to_json())
  pathlib.Path(job.workdir, "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))


def test_skips_finished_runs_and_reruns_the_others(tmp_path):
  jobs = sweep.expand("table1", str(tmp_path / "runs"), only=["mlp_1x512*"])
  jobs += sweep.expand("figure1bc", str(tmp_path / "runs"), only=["mlp_1x512-p0.[12]-fit"])
  assert len(jobs) == 5 and jobs[0].config.num_epochs == 100
  _fake_workdir(jobs[0], [{"epoch": e, "step": e} for e in range(1, 101)])  # Finished.
  _fake_workdir(jobs[1], [{"epoch": 1, "step": 1}])  # Interrupted.
  _fake_workdir(jobs[3], [{"epoch": 1, "step": 1}, {"epoch": 2, "step": 2, "fit_step": 2}])
  assert [j.status() for j in jobs] == ["finished", "partial", "new", "finished", "new"]
  # A stand-in python records which runs the sweep starts, in order.
  log = tmp_path / "started"
  fake = tmp_path / "python"
  fake.write_text(f"#!/bin/sh\necho \"$4\" >> {log}\n")
  fake.chmod(0o755)
  assert sweep.run_jobs(jobs, python=str(fake)) == []
  started = log.read_text().split()
  assert started == [f"--workdir={jobs[i].workdir}" for i in (1, 2, 4)]

  # A workdir that holds another run (another scale, say) is refused up front.
  other = sweep.expand("table1", str(tmp_path / "runs"), only=["mlp_1x512-wd"],
                       overrides={"num_train": 500})
  with pytest.raises(ValueError, match="num_train: 0 in the workdir, 500 now"):
    sweep.run_jobs(other + jobs, python=str(fake))
  assert log.read_text().split() == started


def test_runlocal_sweep_end_to_end_skips_resumes_and_reports(tmp_path, cifar_npz):
  """Two tiny real runs through the CLI; a rerun skips them; more epochs resume one."""
  root, out = tmp_path / "runs", tmp_path / "report"

  def run_sweep(*extra):
    proc = subprocess.run(
        [sys.executable, "-m", "rethinking.sweep", "--sweep=figure1bc", "--scale=runlocal",
         f"--root={root}", f"--dataset={cifar_npz}", "--only=mlp_1x512-p0.0-fit,mlp_1x512-p1.0-fit",
         "--set=num_train=200", "--set=num_test=200", "--set=batch_size=50", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout

  out1 = run_sweep("--set=num_epochs=1")
  assert "run 1/2: mlp_1x512-p0.0-fit/seed0" in out1 and "run 2/2: mlp_1x512-p1.0-fit" in out1
  assert "ETA" in out1 and "2 runs, 0 failed" in out1
  p0 = root / "cifar10" / "mlp_1x512-p0.0-fit" / "seed0"
  first = read_metrics(p0)
  assert [r["epoch"] for r in first] == [1] and first[0]["corruption"] == "partial_labels"

  assert run_sweep("--set=num_epochs=1").count("finished, skipped") == 2
  out3 = run_sweep("--set=num_epochs=2", "--only=mlp_1x512-p0.0-fit", f"--report={out}")
  assert "(resuming)" in out3
  rows = read_metrics(p0)
  assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == first[0]

  # --report: the report of every run under the root, read at runlocal's threshold.
  assert f"wrote {out / 'index.md'} (time to fit at 98% train accuracy)" in out3
  index = (out / "index.md").read_text()
  assert "2 runs under" in index and "![Figure 1c" in index
  assert (out / "figure1c.png").stat().st_size > 10_000
  with open(out / "figure1c.csv") as f:
    errors = {(r["p"], round(float(r["test_error"]), 6)) for r in csv.DictReader(f)}
  assert {p for p, _ in errors} == {"0.0", "1.0"}
  last_p0 = read_metrics(p0)[-1]
  assert ("0.0", round(1 - last_p0["test_accuracy"], 6)) in errors



def test_several_sweeps_run_as_one_and_bad_input_is_one_line(tmp_path):
  jobs = sweep.expand_all(["table1", "figure1a"], str(tmp_path))
  assert len(jobs) == 19 + 3  # Figure 1a's true and random labels are Table 1 runs.
  assert len({j.workdir for j in jobs}) == len(jobs)
  only = sweep.expand_all(["figure1bc", "figure1a"], str(tmp_path), "cpu",
                          only=["alexnet_small-p1.0-fit", "*_pixels"])
  assert [j.name for j in only] == ["alexnet_small-p1.0-fit/seed0"] + [
      f"{m}-{c}_pixels/seed0" for m in ("mlp_1x512", "inception_small")
      for c in ("shuffled", "random", "gaussian")]
  assert sweep.fit_threshold("cpu") == 0.9 and sweep.fit_threshold("paper") == paper.FIT_THRESHOLD
  for args, message in (
      (["--sweep=table1,nosuch"], "error: unknown sweep 'nosuch'; known: table1, figure1a"),
      (["--sweep=table1", "--set=model=resnet"],
       "error: run inception_small-crop-wd: config.model='resnet' is not allowed"),
      (["--sweep=table1", "--only=zz*"], "error: no runs of sweep 'table1' match --only=zz*")):
    proc = subprocess.run([sys.executable, "-m", "rethinking.sweep", f"--root={tmp_path}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), lines
  assert os.listdir(tmp_path) == []  # Nothing started.


def test_cpu_scale_sizes_figure1bc_and_keeps_the_learning_rate_per_example(tmp_path):
  jobs = _expand("figure1bc", tmp_path, scale="cpu", dataset="/data/c.npz")
  assert len(jobs) == 18  # 3 models x p = 0, 0.2, ..., 1.
  by_name = {j.name: j.config for j in jobs}
  alex = by_name["alexnet_small-p1.0-fit/seed0"]
  assert (alex.num_train, alex.resize, alex.image_size) == (5000, 16, 14)
  assert alex.lr_decay == pytest.approx(0.95 ** (5000 / 50_000), abs=1e-6)
  assert alex.corrupt_prob == 1.0 and alex.stop_at_train_accuracy == 1.0
  inc = by_name["inception_small-p0.0-fit/seed0"]
  assert (inc.resize, inc.bn_momentum) == (12, 0.9)
  figure1a = _expand("figure1a", tmp_path, scale="cpu")
  assert len(figure1a) == 10 and {
      (j.config.model, j.config.num_train, j.config.resize, j.config.num_epochs,
       j.config.stop_at_train_loss) for j in figure1a} == {
           ("mlp_1x512", 10_000, 0, 80, 0.01), ("inception_small", 10_000, 12, 100, 0.01)}
  for model in ("mlp_1x512", "inception_small"):
    assert {j.config.corruption for j in figure1a if j.config.model == model} == {
        "none", "random_labels", "shuffled_pixels", "random_pixels", "gaussian_pixels"}
  # The paper's learning-rate decay per example seen: 10,000 images an epoch.
  assert all(j.config.lr_decay == pytest.approx(0.95 ** 0.2, abs=1e-6) for j in figure1a)
  with pytest.raises(ValueError, match="--scale=cpu is sized for figure1a, figure1bc"):
    _expand("table1", tmp_path, scale="cpu")
