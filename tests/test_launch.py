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


VENV = "/envs/rethinking"
ACTIVATE = [f"source {VENV}/bin/activate", "export RETHINKING_EXPECT_PLATFORM=gpu"]


def launch(script: str, *args: str, check: bool = True, **env) -> subprocess.CompletedProcess:
  base = {k: v for k, v in os.environ.items() if k != "RETHINKING_EXPECT_PLATFORM"}
  proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                        cwd="/", env={**base, "DATA_DIR": "/data/tfds", "VENV": VENV, **env},
                        timeout=60)
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
  assert out == [*ACTIVATE, f"cd {REPO}",
                 "env CUDA_VISIBLE_DEVICES=1 python -m rethinking.main "
                 "--config=configs/cifar10.py:model=inception_small,corruption=random_labels "
                 "--workdir=/runs/inc --config.num_epochs=5"]
  # A user's choice of platform wins ('any': the CPU is fine).
  out = lines(launch("cifar_single_gpu.sh", "--dry_run", "model=mlp_1x512", "/runs/mlp",
                     RETHINKING_EXPECT_PLATFORM="any"))
  assert out[1] == "export RETHINKING_EXPECT_PLATFORM=any"


def test_a_missing_environment_is_one_error_line(tmp_path):
  proc = launch("cifar_single_gpu.sh", "model=mlp_1x512", str(tmp_path / "run"), check=False,
                VENV=str(tmp_path / "no_env"))
  assert proc.returncode == 2 and not proc.stdout
  assert proc.stderr.count("\n") == 1
  assert proc.stderr.startswith(f"error: no Python environment at {tmp_path}/no_env: create it")
  assert not (tmp_path / "run").exists()


def test_imagenet_one_node_all_gpus_and_relative_workdir(tmp_path):
  proc = subprocess.run(["bash", str(LAUNCH / "imagenet_one_node.sh"), "labels=random,wd", "w"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=60,
                        env={**os.environ, "DRY_RUN": "1", "DATA_DIR": "tfds", "VENV": VENV})
  assert lines(proc) == [*ACTIVATE, f"cd {REPO}",
                         "python -m rethinking.main --config=configs/imagenet.py:labels=random,wd "
                         f"--workdir={tmp_path}/w --config.dataset=imagenet2012 "
                         f"--config.data_dir={tmp_path}/tfds"]
  out = lines(launch("imagenet_one_node.sh", "labels=true,aug,dropout,wd", "/ckpt/t2", "--dry_run",
                     GPUS="0,1,2,3"))
  assert out[3] == ("env CUDA_VISIBLE_DEVICES=0,1,2,3 python -m rethinking.main "
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
      f"--chdir={REPO} --partition=gpu --export=ALL,REPO={REPO},VENV={VENV},"
      "DATASET=imagenet2012,DATA_DIR=/data/tfds launch/imagenet_slurm.sbatch labels=random "
      "/shared/w --config.seed=1",
      "# then, in the job, launch/imagenet_slurm.sbatch runs:",
      *ACTIVATE,
      f"cd {REPO}",
      f"srun {main}",
      "# if it exits 75 (saved after SIGTERM):",
      "scontrol requeue $SLURM_JOB_ID"]
  header = (LAUNCH / "imagenet_slurm.sbatch").read_text()
  for directive in ("--ntasks-per-node=1", "--signal=TERM@120", "--requeue", "--open-mode=append"):
    assert f"#SBATCH {directive}\n" in header
  # One process per GPU: 8 tasks per node, the node's CPUs split between them.
  out = lines(launch("slurm_multinode.sh", "--dry_run", "labels=random", "/shared/w", NODES="2",
                     TASKS_PER_NODE="gpu"))
  assert out[1].startswith("sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 "
                           "--cpus-per-task=4 ")
  bad = launch("slurm_multinode.sh", "--dry_run", "labels=random", "/w", check=False,
               TASKS_PER_NODE="2")
  assert bad.returncode == 2 and bad.stderr == "error: TASKS_PER_NODE=2: expected 1 or gpu\n"


def test_the_batch_script_is_the_shared_template_rendered():
  """launch/imagenet_slurm.sbatch and the sweeps' array jobs come from launch/slurm.sbatch.in."""
  from rethinking import sweep  # pylint: disable=g-import-not-at-top
  assert (LAUNCH / "imagenet_slurm.sbatch").read_text() == sweep.imagenet_sbatch(), (
      "launch/imagenet_slurm.sbatch is out of date: regenerate it with python -c 'from "
      "rethinking import sweep; print(sweep.imagenet_sbatch(), end=\"\")' > "
      "launch/imagenet_slurm.sbatch")
  assert "{{" not in sweep.imagenet_sbatch()


def _fake_slurm(tmp_path, srun_exit: int) -> tuple[dict, pathlib.Path]:
  """Fake `srun`/`scontrol` first on PATH and a fake environment to activate; srun logs
  its command line and what the activation and the launcher exported."""
  bin_dir, log, venv = tmp_path / "bin", tmp_path / "log", tmp_path / "venv"
  bin_dir.mkdir()
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text("export FAKE_ENV_ACTIVE=yes\n")
  (bin_dir / "srun").write_text(
      f'#!/bin/sh\necho "srun $*" >> {log}\n'
      f'echo "env $FAKE_ENV_ACTIVE $RETHINKING_EXPECT_PLATFORM" >> {log}\n'
      f'sleep 1\nexit {srun_exit}\n')
  (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "scontrol $*" >> {log}\n')
  for tool in ("srun", "scontrol"):
    (bin_dir / tool).chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
         "SLURM_SUBMIT_DIR": str(REPO), "DATA_DIR": "/data/tfds", "VENV": str(venv)}
  env.pop("RETHINKING_EXPECT_PLATFORM", None)
  return env, log


def _signal_when_started(job: subprocess.Popen, log: pathlib.Path) -> None:
  deadline = time.time() + 30
  while not log.exists() and time.time() < deadline:
    time.sleep(0.05)
  job.send_signal(signal.SIGTERM)  # As SLURM does on preemption, while srun still runs.


@pytest.mark.parametrize("srun_exit, requeued", [(75, True), (0, False), (1, False)])
def test_slurm_job_requeues_itself_after_saving(tmp_path, srun_exit, requeued):
  """SLURM signals the batch shell too: it must survive, wait for srun, and requeue on 75."""
  env, log = _fake_slurm(tmp_path, srun_exit)
  job = subprocess.Popen(["bash", str(LAUNCH / "imagenet_slurm.sbatch"), "labels=true", "/w"],
                         env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
  _signal_when_started(job, log)
  assert job.wait(timeout=30) == srun_exit
  calls = log.read_text().splitlines()
  assert shlex.split(calls[0])[:4] == ["srun", "python", "-m", "rethinking.main"]
  assert calls[1] == "env yes gpu"  # Run inside the activated environment, GPU expected.
  assert calls[2:] == (["scontrol requeue 4242"] if requeued else [])


def test_sweep_array_task_runs_its_run_and_requeues_itself(tmp_path):
  """The sweep's array job: the same template, one task per run, each requeued alone."""
  from rethinking import sweep  # pylint: disable=g-import-not-at-top
  jobs = sweep.expand("table4", str(tmp_path / "root"))
  script = tmp_path / "table4.sbatch"
  env, log = _fake_slurm(tmp_path, 75)
  script.write_text(sweep.slurm_script(jobs, "table4", str(tmp_path / "root"), env["VENV"]))
  for directive in ("--signal=TERM@120", "--requeue", f"--array=0-{len(jobs) - 1}"):
    assert f"#SBATCH {directive}\n" in script.read_text()
  env["SLURM_ARRAY_TASK_ID"], env["SLURM_JOB_ID"] = "1", "5001"  # Each array task: its own id.
  dry = subprocess.run(["bash", str(script), "--dry_run"], env=env, capture_output=True,
                       text=True, timeout=60)
  assert dry.returncode == 0, dry.stderr
  assert lines(dry) == [f"source {env['VENV']}/bin/activate",
                        "export RETHINKING_EXPECT_PLATFORM=gpu", f"cd {REPO}",
                        "srun " + shlex.join(jobs[1].command()),
                        "# if it exits 75 (saved after SIGTERM):", "scontrol requeue 5001"]
  job = subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                         text=True)
  _signal_when_started(job, log)
  assert job.wait(timeout=30) == 75
  assert log.read_text().splitlines() == ["srun " + " ".join(jobs[1].command()), "env yes gpu",
                                          "scontrol requeue 5001"]
  env["SLURM_ARRAY_TASK_ID"] = str(len(jobs))
  bad = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and bad.stderr.startswith(f"error: array task '{len(jobs)}' is not")


def test_tpu_pod_copies_installs_and_runs_on_every_worker():
  out = lines(launch("imagenet_tpu_pod.sh", "--dry_run", "labels=true,wd", "/mnt/ckpt/t2",
                     "--config.note=two words", PROJECT="proj", DATA_DIR="gs://b/tfds", **TPU))
  assert len(out) == 3 and out[0].startswith("tar -czf ") and out[0].endswith(f"-C {REPO} "
      "--exclude=.git --exclude=__pycache__ '--exclude=*.egg-info' --exclude=.pytest_cache "
      "--exclude=./.venv .")
  tarball = shlex.split(out[0])[2]
  assert out[1] == (f"gcloud compute tpus tpu-vm scp {tarball} my-tpu:rethinking-src.tar.gz "
                    "--zone=us-central2-b --worker=all --project=proj")
  ssh = shlex.split(out[2])
  assert ssh[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu",
                     "--zone=us-central2-b", "--worker=all", "--project=proj"]
  assert len(ssh) == 10 and ssh[9].startswith("--command=")
  remote = ssh[9][len("--command="):]
  assert subprocess.run(["bash", "-n"], input=remote, text=True).returncode == 0
  steps = [shlex.split(step) for step in remote.split(" && ")]
  assert steps == [
      ["mkdir", "-p", "rethinking"],
      ["tar", "-xzf", "rethinking-src.tar.gz", "-C", "rethinking"],
      ["cd", "rethinking"],
      # A stock TPU VM has Python 3.10: uv brings 3.12 and a named environment.
      ["(test", "-x", "~/.local/bin/uv", "||", "curl", "-LsSf", "https://astral.sh/uv/install.sh",
       "|", "env", "UV_INSTALL_DIR=$HOME/.local/bin", "UV_NO_MODIFY_PATH=1", "sh)"],
      ["(test", "-x", ".venv/bin/python", "||", "~/.local/bin/uv", "venv", "-q", "--python",
       "3.12", ".venv)"],
      ["~/.local/bin/uv", "pip", "install", "-q", "--python", ".venv/bin/python", "-e", ".[tpu]"],
      ["source", ".venv/bin/activate"],
      ["export", "RETHINKING_EXPECT_PLATFORM=tpu"],
      ["python", "-m", "rethinking.main", "--config=configs/imagenet.py:labels=true,wd",
       "--workdir=/mnt/ckpt/t2", "--config.dataset=imagenet2012", "--config.data_dir=gs://b/tfds",
       "--config.note=two words"]]
  assert launch("imagenet_tpu_pod.sh", "--dry_run", "a", "b", check=False).returncode == 2
