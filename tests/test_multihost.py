"""Multi-device and multi-process runs of the data-parallel trainer, on real JPEG files.

The reference is one process with 8 (fake CPU) devices, dropout on. A real 2-process
run on localhost (4 devices each, gloo collectives) must match it: started the way a
cluster starts it, by launch/imagenet_slurm.sbatch, whose `srun` here runs two local
tasks with SLURM's variables, so rethinking.distributed finds the coordinator and
the ranks in them. A run started on 8 devices must resume on 1.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from conftest import REPO, read_metrics

EPOCHS, STEPS_PER_EPOCH = 2, 3  # 48 training images / global batch 16.
# Every run of this file: the same model, sizes and dropout (the masks must not depend
# on the device layout).
OVERRIDES = ("--config.model=inception_small", "--config.image_size=32",
             "--config.batch_size=16", "--config.eval_batch_size=8", "--config.dropout_rate=0.5")
PRESET = "runlocal,labels=random,aug"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  for split, per_class in (("train", 16), ("validation", 4)):
    for c in ("cat", "dog", "eel"):
      d = root / split / c
      d.mkdir(parents=True)
      for i in range(per_class):
        h, w = rng.integers(36, 80, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
  return root


def _command(workdir, folder, epochs=EPOCHS):
  return [sys.executable, "-m", "rethinking.main", f"--config=configs/imagenet.py:{PRESET}",
          f"--workdir={workdir}", f"--config.dataset={folder}", *OVERRIDES,
          f"--config.num_epochs={epochs}"]


def _env(devices):
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu"}


def _run(cmd, devices):
  proc = subprocess.run(cmd, cwd=REPO, env=_env(devices), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _params(workdir, step):
  path = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path)["params"]


def _flat(tree):
  if isinstance(tree, dict):
    return np.concatenate([_flat(tree[k]) for k in sorted(tree)])
  return np.ravel(np.asarray(tree))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_folder):
  workdir = tmp_path_factory.mktemp("eight_devices")
  _run(_command(workdir, image_folder), devices=8)
  return workdir


def test_runlocal_on_eight_devices_writes_top1_and_top5(reference):
  rows = read_metrics(reference)
  assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == EPOCHS * STEPS_PER_EPOCH
  for key in ("train_accuracy", "train_top5_accuracy", "test_accuracy", "test_top5_accuracy"):
    assert 0.0 <= rows[-1][key] <= 1.0
  assert rows[-1]["test_count"] == 12  # Every validation image once, padding masked.
  assert rows[-1]["test_top5_accuracy"] == 1.0  # 3 classes: top-5 always hits.


# `srun` for one node: SLURM_NTASKS local tasks, each with its own SLURM variables.
# Output goes to files, not pipes: a process blocked on a full pipe while the other
# waits for it in a collective would deadlock the pair.
FAKE_SRUN = """#!/usr/bin/env bash
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" > "$LOGS/process$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""


def _fake_cluster(tmp_path) -> dict:
  """PATH with the fake srun; VENV, an environment whose `python` is this interpreter."""
  bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
  (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
  for tool in (bin_dir / "srun", venv / "bin" / "python"):
    tool.chmod(0o755)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  # SLURM's job and step variables for 2 tasks on one node; srun adds each task's.
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "VENV": str(venv), "LOGS": str(tmp_path),
          "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_NTASKS": "2",
          "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_NUM_NODES": "1",
          "SLURM_STEP_TASKS_PER_NODE": "2", "JAX_COORDINATOR_PORT": str(port),
          "RETHINKING_EXPECT_PLATFORM": "cpu"}


def test_two_processes_match_one_process(tmp_path, image_folder, reference):
  workdir = tmp_path / "two_processes"
  env = {**_env(4), **_fake_cluster(tmp_path), "DATASET": str(image_folder),
         "DATA_DIR": str(tmp_path / "tfds")}
  # Its own process group: a pair stuck in a collective is killed whole, trainers included.
  job = subprocess.Popen(["bash", str(REPO / "launch" / "imagenet_slurm.sbatch"), PRESET,
                          str(workdir), *OVERRIDES, f"--config.num_epochs={EPOCHS}"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
  try:
    out, _ = job.communicate(timeout=900)
  except subprocess.TimeoutExpired:
    os.killpg(job.pid, signal.SIGKILL)
    out, _ = job.communicate()
  logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
  assert job.returncode == 0, out + "".join(log[-3000:] for log in logs)
  # Each process joined through the SLURM plan, with all of its devices.
  for i, log in enumerate(logs):
    assert f"jax.distributed: process {i} of 2 (slurm; coordinator localhost:" in log, log[-3000:]
    assert "; 4 local of 8 devices" in log
  _assert_same_training(workdir, reference)
  rows, ref_rows = read_metrics(workdir), read_metrics(reference)
  assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]


def test_resume_on_a_different_device_count(tmp_path, image_folder, reference):
  workdir = tmp_path / "eight_then_one"
  _run(_command(workdir, image_folder, 1), devices=8)
  proc = _run(_command(workdir, image_folder, EPOCHS), devices=1)
  assert f"Resuming from step {STEPS_PER_EPOCH}" in proc.stderr
  rows = read_metrics(workdir)
  assert [r["epoch"] for r in rows] == [1, 2]
  _assert_same_training(workdir, reference)


def _assert_same_training(workdir, reference):
  """Equal up to float noise: the same images, labels and crops at every step give
  the same losses to ~1e-5; BatchNorm's E[x^2] - E[x]^2 and other reduction orders
  leave parameters (mostly near-zero BN offsets) within ~1e-4."""
  for row, ref in zip(read_metrics(workdir), read_metrics(reference), strict=True):
    assert row["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)
    assert row["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-4)
  got, want = _flat(_params(workdir, 6)), _flat(_params(reference, 6))
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=3e-4)
