"""The launch scripts: dry runs print the exact commands; the SLURM job requeues after exit 75.

No GPU, SLURM or gcloud is needed: dry runs print, and the requeue test puts fake
`srun` and `scontrol` executables first on PATH.
"""

import os
import pathlib
import shlex
import signal
import subprocess
import time

import pytest

from conftest import REPO

LAUNCH = REPO / "launch"
SCRIPTS = ("cifar_single_gpu.sh", "imagenet_one_node.sh", "slurm_multinode.sh",
           "imagenet_slurm.sbatch", "imagenet_tpu_pod.sh")
TPU = {"TPU_NAME": "my-tpu", "ZONE": "us-central2-b"}


def launch(script: str, *args: str, check: bool = True, **env) -> subprocess.CompletedProcess:
  proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                        cwd="/", env={**os.environ, "DATA_DIR": "/data/tfds", **env}, timeout=60)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def lines(proc) -> list[str]:
  return proc.stdout.splitlines()


@pytest.mark.parametrize("script", SCRIPTS)
def test_usage_and_missing_arguments(script):
  assert subprocess.run(["bash", "-n", str(LAUNCH / script)]).returncode == 0
  assert "Usage:" in launch(script, "--help", **TPU).stdout
  proc = launch(script, "--dry_run", "only_a_preset", check=False, **TPU)
  assert proc.returncode == 2 and "Usage:" in proc.stderr and not proc.stdout


def test_cifar_single_gpu():
  out = lines(launch("cifar_single_gpu.sh", "--dry_run", "model=inception_small,corruption=random_labels",
                     "/runs/inc", "--config.num_epochs=5", GPU="1"))
  assert out == [f"cd {REPO}",
                 "env CUDA_VISIBLE_DEVICES=1 python -m rethinking.main "
                 "--config=configs/cifar10.py:model=inception_small,corruption=random_labels "
                 "--workdir=/runs/inc --config.num_epochs=5"]


def test_imagenet_one_node_all_gpus_and_relative_workdir(tmp_path):
  proc = subprocess.run(["bash", str(LAUNCH / "imagenet_one_node.sh"), "labels=random,wd", "w"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=60,
                        env={**os.environ, "DRY_RUN": "1", "DATA_DIR": "tfds"})
  assert lines(proc) == [f"cd {REPO}",
                         "python -m rethinking.main --config=configs/imagenet.py:labels=random,wd "
                         f"--workdir={tmp_path}/w --config.dataset=imagenet2012 "
                         f"--config.data_dir={tmp_path}/tfds"]
  out = lines(launch("imagenet_one_node.sh", "labels=true,aug,dropout,wd", "/ckpt/t2", "--dry_run",
                     GPUS="0,1,2,3"))
  assert out[1] == ("env CUDA_VISIBLE_DEVICES=0,1,2,3 python -m rethinking.main "
                    "--config=configs/imagenet.py:labels=true,aug,dropout,wd --workdir=/ckpt/t2 "
                    "--config.dataset=imagenet2012 --config.data_dir=/data/tfds")


def test_slurm_submission_and_batch_script():
  out = lines(launch("slurm_multinode.sh", "--dry_run", "labels=random", "/shared/w",
                     "--config.seed=1", NODES="2", PARTITION="gpu"))
  main = ("python -m rethinking.main --config=configs/imagenet.py:labels=random --workdir=/shared/w "
          "--config.dataset=imagenet2012 --config.data_dir=/data/tfds --config.seed=1")
  assert out == [
      f"cd {REPO}",
      "sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --cpus-per-task=32 --time=48:00:00 "
      f"--chdir={REPO} --partition=gpu --export=ALL,REPO={REPO},DATASET=imagenet2012,"
      "DATA_DIR=/data/tfds,PYTHON=python launch/imagenet_slurm.sbatch labels=random /shared/w "
      "--config.seed=1",
      "# then, in the job, launch/imagenet_slurm.sbatch runs:",
      f"cd {REPO}",
      f"srun --ntasks-per-node=1 {main}",
      "# if it exits 75 (saved after SIGTERM):",
      "scontrol requeue $SLURM_JOB_ID"]
  header = (LAUNCH / "imagenet_slurm.sbatch").read_text()
  for directive in ("--ntasks-per-node=1", "--signal=TERM@120", "--requeue", "--open-mode=append"):
    assert f"#SBATCH {directive}\n" in header


@pytest.mark.parametrize("srun_exit, requeued", [(75, True), (0, False), (1, False)])
def test_slurm_job_requeues_itself_after_saving(tmp_path, srun_exit, requeued):
  """SLURM signals the batch shell too: it must survive, wait for srun, and requeue on 75."""
  bin_dir, log = tmp_path / "bin", tmp_path / "log"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(f'#!/bin/sh\necho "srun $*" >> {log}\nsleep 1\nexit {srun_exit}\n')
  (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "scontrol $*" >> {log}\n')
  for tool in ("srun", "scontrol"):
    (bin_dir / tool).chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
         "SLURM_SUBMIT_DIR": str(REPO), "DATA_DIR": "/data/tfds"}
  job = subprocess.Popen(["bash", str(LAUNCH / "imagenet_slurm.sbatch"), "labels=true", "/w"],
                         env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
  deadline = time.time() + 30
  while not log.exists() and time.time() < deadline:
    time.sleep(0.05)
  job.send_signal(signal.SIGTERM)  # As SLURM does on preemption, while srun still runs.
  assert job.wait(timeout=30) == srun_exit
  calls = log.read_text().splitlines()
  assert shlex.split(calls[0])[:4] == ["srun", "--ntasks-per-node=1", "python", "-m"]
  assert calls[1:] == (["scontrol requeue 4242"] if requeued else [])


def test_tpu_pod_copies_installs_and_runs_on_every_worker():
  out = lines(launch("imagenet_tpu_pod.sh", "--dry_run", "labels=true,wd", "/mnt/ckpt/t2",
                     "--config.note=two words", PROJECT="proj", DATA_DIR="gs://b/tfds", **TPU))
  assert len(out) == 3 and out[0].startswith("tar -czf ") and out[0].endswith(f"-C {REPO} "
      "--exclude=.git --exclude=__pycache__ '--exclude=*.egg-info' --exclude=.pytest_cache .")
  tarball = shlex.split(out[0])[2]
  assert out[1] == (f"gcloud compute tpus tpu-vm scp {tarball} my-tpu:rethinking-src.tar.gz "
                    "--zone=us-central2-b --worker=all --project=proj")
  ssh = shlex.split(out[2])
  assert ssh[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu",
                     "--zone=us-central2-b", "--worker=all", "--project=proj"]
  assert len(ssh) == 10 and ssh[9].startswith("--command=")
  steps = [shlex.split(step) for step in ssh[9][len("--command="):].split(" && ")]
  assert steps == [
      ["mkdir", "-p", "rethinking"],
      ["tar", "-xzf", "rethinking-src.tar.gz", "-C", "rethinking"],
      ["cd", "rethinking"],
      ["python3", "-m", "pip", "install", "-q", "-e", ".", "jax[tpu]"],
      ["python3", "-m", "rethinking.main", "--config=configs/imagenet.py:labels=true,wd",
       "--workdir=/mnt/ckpt/t2", "--config.dataset=imagenet2012", "--config.data_dir=gs://b/tfds",
       "--config.note=two words"]]
  assert launch("imagenet_tpu_pod.sh", "--dry_run", "a", "b", check=False).returncode == 2
