"""Every entry mistake of `python -m rethinking.main`: one `error:` line, exit 2, nothing written.

Each case runs the real command line in a subprocess (absl's flags are process-global).
Mistakes in flags, config arguments and the workdir path are reported before JAX is
imported, so each case takes about a second.
"""

import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None, timeout=120):
  full_env = dict(os.environ, **(env or {}))
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-m", "rethinking.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, env=full_env)
  return proc, time.monotonic() - start


def assert_one_error_line(proc, *expected):
  """Exit 2, and stderr is exactly one line `error: ...` holding each expected piece."""
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  assert "Config" not in proc.stdout and "Traceback" not in proc.stderr
  for piece in expected:
    assert piece in lines[0], (piece, lines[0])
  return lines[0]


CASES = {
    # name: (extra args, pieces the one line must hold)
    "misspelt field": (["--config=configs/cifar10.py", "--config.num_epoch=3"],
                       ["--config.num_epoch=3", "'num_epoch'", "--config.num_epochs"]),
    "misspelt model field": (["--config=configs/cifar10.py", "--config.modle=mlp_1x512"],
                             ["--config.modle", "--config.model?"]),
    "misspelt preset key": (["--config=configs/cifar10.py:modle=mlp_1x512"],
                            ["configs/cifar10.py:modle=mlp_1x512", "'modle'", "known:", "model"]),
    "preset value of the wrong type": (["--config=configs/cifar10.py:model=mlp_1x512,p=abc"],
                                       ["p='abc'", "expected a float"]),
    "missing config file": (["--config=configs/cifar11.py"],
                            ["--config=configs/cifar11.py", "No such file"]),
    "field value of the wrong type": (["--config=configs/cifar10.py",
                                       "--config.num_epochs=abc"],
                                      ["--config.num_epochs=abc", "int"]),
    "misspelt flag": (["--config=configs/cifar10.py", "--workdr=/tmp/x"],
                      ["workdr", "workdir"]),
    "positional argument": (["--config=configs/cifar10.py", "extra"],
                            ["unexpected arguments", "extra"]),
    "auto field given a word": (["--config=configs/cifar10.py",
                                 "--config.half_precision=maybe"],
                                ["--config.half_precision=maybe", "boolean"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_flag_mistake_is_one_line(tmp_path, name):
  args, expected = CASES[name]
  workdir = tmp_path / "run"
  proc, _ = run_cli(*args, f"--workdir={workdir}")
  assert_one_error_line(proc, *expected)
  assert not workdir.exists()


def test_missing_config_flag(tmp_path):
  assert_one_error_line(run_cli(f"--workdir={tmp_path / 'run'}")[0], "--config is required")


@pytest.mark.parametrize("kind", ["empty", "missing flag", "a file", "under a file"])
def test_bad_workdir_is_one_line(tmp_path, kind):
  afile = tmp_path / "afile"
  afile.write_text("keep me")
  flag = {"empty": ["--workdir="], "missing flag": [], "a file": [f"--workdir={afile}"],
          "under a file": [f"--workdir={afile}/run"]}[kind]
  proc, _ = run_cli("--config=configs/cifar10.py:quickstart", *flag)
  expected = {"empty": "expected a directory path", "missing flag": "--workdir",
              "a file": "is a file", "under a file": f"{afile} is a file"}[kind]
  assert_one_error_line(proc, expected)
  assert afile.read_text() == "keep me"


@pytest.fixture
def read_only_dir(tmp_path):
  """A real read-only filesystem (a read-only bind mount): root ignores permission bits."""
  src, mnt = tmp_path / "src", tmp_path / "ro"
  src.mkdir()
  mnt.mkdir()
  mounted = subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
  try:
    if subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)]).returncode != 0:
      pytest.skip("cannot remount read-only here")
    yield mnt
  finally:
    subprocess.run(["umount", str(mnt)])


@pytest.mark.parametrize("sub", ["", "run"])
def test_read_only_workdir_is_one_line(read_only_dir, sub):
  workdir = read_only_dir / sub if sub else read_only_dir
  proc, _ = run_cli("--config=configs/cifar10.py:quickstart", f"--workdir={workdir}")
  assert_one_error_line(proc, f"--workdir={workdir}", "read-only filesystem")


def test_bad_config_value_is_one_line_without_config_dump(tmp_path):
  """A field's value is checked (after JAX starts) before the config is logged."""
  proc, _ = run_cli("--config=configs/cifar10.py:quickstart", "--config.model=resnet",
                    f"--workdir={tmp_path / 'run'}")
  assert_one_error_line(proc, "config.model='resnet'", "mlp_1x512")
  assert "Config" not in proc.stderr and "backend" not in proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["1.5", "-0.2"])
def test_bad_memory_fraction_is_one_line(tmp_path, value):
  proc, _ = run_cli("--config=configs/cifar10.py:quickstart", f"--config.memory_fraction={value}",
                    f"--workdir={tmp_path / 'run'}")
  assert_one_error_line(proc, f"config.memory_fraction={float(value)}", "(0, 1]")
  assert not (tmp_path / "run").exists()


_RECORD_ENV_AT_JAX_START = """
import os, sys
from rethinking import main
def first_jax_import():  # main's first call that imports jax
  print("jax imported:", "jax" in sys.modules)
  print("fractions:", os.environ.get("XLA_CLIENT_MEM_FRACTION"),
        os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"))
  sys.exit(0)
main._enable_compilation_cache = first_jax_import
sys.argv = ["main"] + sys.argv[1:]
main.run()
"""


@pytest.mark.parametrize("flag,expected", [
    ("--config.memory_fraction=0.25", "fractions: 0.25 None"),
    ("--config.memory_fraction=0", "fractions: None 0.5"),  # 0: the caller's own setting.
])
def test_memory_fraction_is_set_before_jax_is_imported(tmp_path, flag, expected):
  """JAX reads its GPU memory share once, when it starts: main sets it first (and drops
  the deprecated variable, which jaxlib refuses beside the new one)."""
  proc = subprocess.run(
      [sys.executable, "-c", _RECORD_ENV_AT_JAX_START, "--config=configs/cifar10.py:quickstart",
       flag, f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
      timeout=120, env=dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.5"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "jax imported: False" in proc.stdout and expected in proc.stdout, proc.stdout


def test_tfds_unreachable_is_one_line_within_seconds(tmp_path):
  """A TFDS dataset not prepared, and its download host unreachable: one line naming the
  ways out, in seconds (TFDS itself retried for minutes), no folders left behind.

  Unreachable for certain on any machine: the download goes through a proxy on a closed
  loopback port, so this never downloads CIFAR-10 where the network is up."""
  data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  proc, seconds = run_cli("--config=configs/cifar10.py:model=mlp_1x512",
                          f"--config.data_dir={data_dir}", f"--workdir={workdir}",
                          env={"HTTPS_PROXY": "http://127.0.0.1:1"})
  assert_one_error_line(proc, "config.dataset='cifar10'", "unreachable", "--config.dataset=",
                        "--config.data_dir=", "quickstart")
  assert seconds < 60  # ~5 s here, mostly importing TensorFlow; 200+ s before the check.
  assert not data_dir.exists() and not workdir.exists()
