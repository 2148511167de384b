"""Shared test fixtures: the real data in ../shared/data, and command-line runs."""

import os

# 8 fake CPU devices for the data-parallel code, set before anything imports jax.
# Single-device code (CIFAR) runs on the first of them, as on a multi-GPU machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Those fake devices are CPU devices: on a GPU or TPU machine too (JAX_PLATFORMS=cuda runs the
# suite on the GPU instead, where the 8-device tests then need 8 GPUs).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are shared by the test process and every command-line run it
# starts: conv nets take tens of seconds to compile on a CPU, the cache makes that once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    __import__("tempfile").gettempdir(), "rethinking_test_jax_cache"))

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR_NPZ = SHARED_DATA / "cifar10_10k.npz"
MNIST_NPZ = SHARED_DATA / "mnist.npz"


def require(path: pathlib.Path) -> pathlib.Path:
  """Skips the test, saying why, when a file from ../shared/data is absent."""
  if not path.exists():
    pytest.skip(f"real data {path} is absent (../shared/data beside the repo)")
  return path


@pytest.fixture
def cifar_npz() -> pathlib.Path:
  return require(CIFAR_NPZ)


@pytest.fixture
def mnist_npz() -> pathlib.Path:
  return require(MNIST_NPZ)


def run_main(workdir, config_arg: str, *overrides: str, check: bool = True,
             env: dict | None = None, config_file: str = "configs/cifar10.py"):
  """Runs `python -m rethinking.main` in a subprocess, as a user would."""
  cmd = [sys.executable, "-m", "rethinking.main", f"--config={config_file}:{config_arg}",
         f"--workdir={workdir}", *overrides]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def read_metrics(workdir) -> list[dict]:
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]
