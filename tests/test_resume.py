"""Runs that lose nothing: SIGKILL and SIGTERM mid-run, damaged checkpoints, refusals.

Real subprocesses of the command line, real signals, real orbax checkpoints. The
reference is one uninterrupted run; every interrupted run must end bit-identical
to it (parameters, optimizer state, BatchNorm statistics) with the same metrics rows.
"""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import CIFAR_NPZ, REPO, read_metrics, require, run_main

EPOCHS = 5
STEPS_PER_EPOCH = 8  # 1,000 images / batch 128, last batch wrapped.
# Exercises every source of randomness that must survive a restart: data order,
# augmentation, dropout; mid-epoch checkpoints every 3 steps.
ARG = "model=mlp_1x512,corruption=random_labels,augment=crop_flip"


def _overrides(**extra):
  flags = {"dataset": str(CIFAR_NPZ), "num_train": 1000, "num_test": 500,
           "num_epochs": EPOCHS, "dropout_rate": 0.2, "checkpoint_every_steps": 3,
           "log_every_steps": 2, "eval_train": False, **extra}
  return [f"--config.{k}={v}" for k, v in flags.items()]


def _start(workdir, *overrides):
  cmd = [sys.executable, "-m", "rethinking.main", f"--config=configs/cifar10.py:{ARG}",
         f"--workdir={workdir}", *(overrides or _overrides())]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _checkpoint_steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _wait_for_checkpoint(proc, workdir, min_step, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(s >= min_step for s in _checkpoint_steps(workdir)):
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended before step {min_step}:\n{proc.stderr.read()[-3000:]}")
    time.sleep(0.05)
  raise AssertionError("no checkpoint in time")


def _final_state(workdir) -> dict:
  step = _checkpoint_steps(workdir)[-1]
  assert step == EPOCHS * STEPS_PER_EPOCH
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path.absolute())


def _assert_same_run(workdir, reference):
  a, b = _final_state(workdir), _final_state(reference)
  leaves_a, leaves_b = [np.asarray(x) for x in _leaves(a)], [np.asarray(x) for x in _leaves(b)]
  assert len(leaves_a) == len(leaves_b) > 4
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # Bit for bit, not approximately.
  strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]
  rows, ref_rows = read_metrics(workdir), read_metrics(reference)
  assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
  assert strip(rows) == strip(ref_rows)


def _leaves(tree):
  if isinstance(tree, dict):
    for k in sorted(tree):
      yield from _leaves(tree[k])
  else:
    yield tree


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  require(CIFAR_NPZ)
  workdir = tmp_path_factory.mktemp("reference")
  run_main(workdir, ARG, *_overrides())
  return workdir


def test_sigkill_at_an_arbitrary_moment_then_resume_is_bit_identical(tmp_path, reference):
  workdir = tmp_path / "killed"
  proc = _start(workdir)
  _wait_for_checkpoint(proc, workdir, min_step=4)
  time.sleep(random.Random(os.getpid()).uniform(0.0, 0.3))  # Mid-step, mid-save, anywhere.
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = _checkpoint_steps(workdir)[-1]
  assert 0 < killed_at < EPOCHS * STEPS_PER_EPOCH
  proc = run_main(workdir, ARG, *_overrides())
  assert f"Resuming from step {killed_at}" in proc.stderr and "damaged" not in proc.stderr
  _assert_same_run(workdir, reference)


def test_sigterm_saves_flushes_and_exits_75_then_continues(tmp_path, reference):
  workdir = tmp_path / "preempted"
  proc = _start(workdir)
  _wait_for_checkpoint(proc, workdir, min_step=3)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 75, stderr[-3000:]
  assert "Preempted (SIGTERM at step" in stderr
  stopped_at = int(stderr.split("SIGTERM at step ")[1].split(")")[0])
  assert _checkpoint_steps(workdir)[-1] == stopped_at  # Saved where it stopped.
  rows = read_metrics(workdir) if (workdir / "metrics.jsonl").exists() else []
  assert [r["step"] for r in rows] == list(range(8, stopped_at + 1, 8))  # Flushed.
  proc = run_main(workdir, ARG, *_overrides())
  assert f"Resuming from step {stopped_at}" in proc.stderr and "damaged" not in proc.stderr
  _assert_same_run(workdir, reference)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, damage):
  workdir = tmp_path / damage
  shutil.copytree(reference, workdir)
  steps = _checkpoint_steps(workdir)
  latest = pathlib.Path(workdir) / "checkpoints" / str(steps[-1])
  files = sorted((p for p in latest.rglob("*") if p.is_file() and "state" in p.parts),
                 key=lambda p: p.stat().st_size)
  victim = files[-1]  # The largest file: the parameter data.
  data = bytearray(victim.read_bytes())
  if damage == "truncate":
    victim.write_bytes(data[: len(data) // 2])
  else:
    rng = np.random.default_rng(0)
    start = len(data) // 3
    data[start:start + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    victim.write_bytes(bytes(data))
  # Continue the run by one epoch: it must notice, fall back, and redo the lost steps.
  proc = run_main(workdir, ARG, *_overrides(num_epochs=EPOCHS + 1))
  assert f"Checkpoint at step {steps[-1]} is damaged" in proc.stderr
  assert f"Resuming from step {steps[-2]}" in proc.stderr
  assert (pathlib.Path(workdir) / "checkpoints_corrupt" / str(steps[-1])).exists()
  rows = read_metrics(workdir)
  assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 2))
  strip = lambda r: {k: v for k, v in r.items() if k != "wall_time"}
  # The redone epoch is the same as before the damage (exact resume from the fallback).
  assert [strip(r) for r in rows[:EPOCHS]] == [strip(r) for r in read_metrics(reference)]


def test_resume_with_a_different_experiment_is_refused(tmp_path, reference):
  workdir = tmp_path / "mismatch"
  shutil.copytree(reference, workdir)
  before = (workdir / "config.json").read_text()
  proc = run_main(workdir, ARG.replace("mlp_1x512", "mlp_3x512"), *_overrides(), check=False)
  assert proc.returncode == 2
  assert "model: 'mlp_1x512' in the workdir, 'mlp_3x512' now" in proc.stderr
  proc = run_main(workdir, ARG, *_overrides(seed=1), check=False)
  assert proc.returncode == 2 and "seed: 0 in the workdir, 1 now" in proc.stderr
  assert "allow_config_change" in proc.stderr
  assert (workdir / "config.json").read_text() == before
  # More epochs is the same experiment, continued.
  run_main(workdir, ARG, *_overrides(num_epochs=EPOCHS + 1))
  assert read_metrics(workdir)[-1]["epoch"] == EPOCHS + 1


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  require(CIFAR_NPZ)
  workdir = tmp_path / "nan"
  run_main(workdir, ARG, *_overrides(num_epochs=1))
  good = _checkpoint_steps(workdir)
  proc = run_main(workdir, ARG, *_overrides(num_epochs=3, learning_rate=1e12,
                                            allow_config_change=True), check=False)
  assert proc.returncode == 1
  bad_step = int(proc.stderr.split("training diverged: the loss of step ")[1].split()[0])
  assert STEPS_PER_EPOCH < bad_step <= 3 * STEPS_PER_EPOCH
  assert f"The last healthy checkpoint is step {good[-1]}" in proc.stderr
  # The mid-epoch checkpoint of step 9 (saved before step 10's loss showed its state
  # diverged) is set aside, not kept as the newest.
  assert _checkpoint_steps(workdir)[-1] == good[-1]
  assert sorted(p.name for p in (workdir / "checkpoints_diverged").iterdir()) == ["9"]
  assert [r["epoch"] for r in read_metrics(workdir)] == [1]


def test_second_process_on_the_same_workdir_refuses(tmp_path):
  require(CIFAR_NPZ)
  workdir = tmp_path / "busy"
  first = _start(workdir, *_overrides(num_epochs=50))
  try:
    _wait_for_checkpoint(first, workdir, min_step=1)
    proc = run_main(workdir, ARG, *_overrides(num_epochs=50), check=False)
    assert proc.returncode == 1
    assert f"is in use by pid {first.pid}" in proc.stderr
    assert first.poll() is None  # The first run is unharmed.
  finally:
    first.kill()
    first.wait()
  # The kernel released the lock with the killed process: the run can continue.
  rows_before = read_metrics(workdir) if (workdir / "metrics.jsonl").exists() else []
  run_main(workdir, ARG, *_overrides(num_epochs=1 + len(rows_before)))
  assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 1 + len(rows_before)
