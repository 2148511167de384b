"""Issue 15: nothing lost under any fault.

Unwritable storage (a read-only bind mount, a full tmpfs, a file where the
checkpoints directory should be), signals outside the training loop, tampered and
repeatedly damaged checkpoints, config drift on resume, and divergence. Real
subprocesses of the command line, real signals, real orbax checkpoints, real
mounts where the machine allows them (skipped, saying why, where not).
"""

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import optax
import pytest

from conftest import CIFAR_NPZ, REPO, read_metrics, require, run_main
from rethinking import checkpoint
from rethinking import loop
from rethinking import step as step_lib
from rethinking import train
from rethinking.models import get_model

ARG = "model=mlp_1x512,corruption=random_labels"
STEPS_PER_EPOCH = 4  # 256 images, batch 64.


def _flags(**extra):
  flags = {"dataset": str(CIFAR_NPZ), "num_train": 256, "num_test": 200, "batch_size": 64,
           "eval_batch_size": 100, "num_epochs": 1, "log_every_steps": 2, **extra}
  return [f"--config.{k}={v}" for k, v in flags.items()]


def _cli(workdir, check=False, prefix=(), **extra):
  cmd = [*prefix, sys.executable, "-m", "rethinking.main", f"--config=configs/cifar10.py:{ARG}",
         f"--workdir={workdir}", *_flags(**extra)]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=check)


def _errors(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith("error:")]


def _steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _can(cmd: str) -> bool:
  try:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
  """A workdir holding two finished epochs (checkpoints at steps 4 and 8, two rows)."""
  require(CIFAR_NPZ)
  workdir = tmp_path_factory.mktemp("two_epochs") / "run"
  _cli(workdir, check=True, num_epochs=2)
  return workdir


def _copy(src, dst):
  shutil.copytree(src, dst)
  (pathlib.Path(dst) / ".lock").unlink(missing_ok=True)
  return dst


# 1. A read-only checkpoints directory.

def test_readonly_checkpoints_stop_promptly_with_one_line_then_resume(tmp_path, two_epochs):
  probe = tmp_path / "probe"
  probe.mkdir()
  if not _can(f"unshare -m sh -c 'mount --bind {probe} {probe} && "
              f"mount -o remount,bind,ro {probe} {probe}'"):
    pytest.skip("needs `unshare -m` and bind mounts (root in a mount namespace) for a real "
                "read-only directory; chmod does not stop root")
  workdir = _copy(two_epochs, tmp_path / "run")
  ckpt = workdir / "checkpoints"
  readonly = ("unshare", "-m", "sh", "-c",
              f"mount --bind {ckpt} {ckpt} && mount -o remount,bind,ro {ckpt} {ckpt} && "
              'exec "$@"', "sh")
  t = time.time()
  proc = _cli(workdir, prefix=readonly, num_epochs=4)
  assert time.time() - t < 120  # No hang at exit (orbax's threads used to wait 10 min).
  assert proc.returncode == 1, proc.stderr[-3000:]
  (line,) = _errors(proc.stderr)
  assert "cannot write the checkpoint of step 12" in line and str(ckpt) in line
  assert "Read-only file system" in line
  assert "Traceback" not in proc.stderr
  # No row past the last durable checkpoint (step 8).
  assert [r["step"] for r in read_metrics(workdir)] == [4, 8]
  assert _steps(workdir) == [4, 8]

  # The newest checkpoint damaged as well: it cannot be moved aside on a read-only
  # mount; one line, exit 1, and nothing moved or lost.
  meta = ckpt / "8" / "meta" / "metadata"
  meta.write_text(meta.read_text().replace('"best_epoch": 2', '"best_epoch": 7'))
  proc = _cli(workdir, prefix=readonly, num_epochs=4)
  assert proc.returncode == 1, proc.stderr[-3000:]
  (line,) = _errors(proc.stderr)
  assert "the checkpoint of step 8 is damaged" in line and "cannot be moved" in line
  assert "Traceback" not in proc.stderr and _steps(workdir) == [4, 8]

  # Writable again: the next run falls back to step 4 (8 is really damaged), ends whole.
  proc = _cli(workdir, num_epochs=4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Checkpoint at step 8 is damaged" in proc.stderr
  assert [r["epoch"] for r in read_metrics(workdir)] == [1, 2, 3, 4]


# 2. A full disk.

def test_full_disk_stops_with_one_line_exit_1_then_resumes(tmp_path):
  require(CIFAR_NPZ)
  ckpt = tmp_path / "run" / "checkpoints"
  ckpt.mkdir(parents=True)
  # mlp_1x512's state is ~9.5 MB: two checkpoints fit in 24 MB, a third does not.
  if not _can(f"mount -t tmpfs -o size=24m tmpfs {ckpt}"):
    pytest.skip("needs `mount -t tmpfs` (root) for a small real filesystem")
  try:
    proc = _cli(tmp_path / "run", num_epochs=3, checkpoint_every_steps=1)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = _errors(proc.stderr)
    assert "cannot write the checkpoint of step 3" in line and str(ckpt) in line
    assert "No space left on device" in line
    assert "Traceback" not in proc.stderr
    assert _steps(tmp_path / "run") == [1, 2]
    assert not [p for p in ckpt.iterdir() if "tmp" in p.name]  # The partial write is freed.
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # No row past step 2.
    subprocess.run(["mount", "-o", "remount,size=64m", str(ckpt)], check=True)
    proc = _cli(tmp_path / "run", num_epochs=3, checkpoint_every_steps=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming from step 2" in proc.stderr
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
  finally:
    subprocess.run(["umount", str(ckpt)], check=False)


def test_unwritable_checkpoints_path_is_one_line_exit_1(tmp_path):
  """Without mount privileges: a file where the checkpoints directory must go."""
  require(CIFAR_NPZ)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("not a directory")
  proc = _cli(workdir, num_epochs=2)
  assert proc.returncode == 1, proc.stderr[-3000:]
  (line,) = _errors(proc.stderr)
  assert "cannot write the checkpoint of step 4" in line and "checkpoints" in line
  assert "Traceback" not in proc.stderr
  assert not (workdir / "metrics.jsonl").exists()
  assert (workdir / "checkpoints").read_text() == "not a directory"


# 3. Signals outside the loop.

def _start(workdir, **extra):
  return subprocess.Popen(
      [sys.executable, "-m", "rethinking.main", f"--config=configs/cifar10.py:{ARG}",
       f"--workdir={workdir}", *_flags(**extra)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_startup_exits_75_without_traceback(tmp_path, sig):
  require(CIFAR_NPZ)
  proc = _start(tmp_path / "run", num_epochs=2)
  time.sleep(1.0)  # Imports: long before the loop (and before the workdir exists).
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 75, stderr[-3000:]
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


def test_sigint_while_compiling_exits_75_without_traceback(tmp_path):
  require(CIFAR_NPZ)
  workdir = tmp_path / "run"
  proc = _start(workdir, num_epochs=2)
  deadline = time.time() + 120
  while not (workdir / "config.json").exists() and time.time() < deadline:
    time.sleep(0.02)  # The workdir is written just before the first step compiles.
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode in (75, 0), stderr[-3000:]
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  if (workdir / "checkpoints").exists():
    assert not list((workdir / "checkpoints").glob("*tmp*"))


def test_sigterm_stops_within_one_dispatch(tmp_path):
  """A long epoch (log_every_steps larger than it): the signal is seen after the
  dispatch in flight, not at the epoch's end (the host runs one dispatch ahead)."""
  require(CIFAR_NPZ)
  workdir = tmp_path / "run"
  # 2,000 images, batch 8: 250 steps per epoch; one checkpoint per 20 steps shows progress.
  proc = _start(workdir, num_train=2000, batch_size=8, log_every_steps=1000,
                checkpoint_every_steps=20, num_epochs=1)
  deadline = time.time() + 120
  while not _steps(workdir) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.01)
  seen = _steps(workdir)[-1]
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 75, stderr[-3000:]
  stopped = int(stderr.split("SIGTERM at step ")[1].split(")")[0])
  # The checkpoint seen was written within 20 steps before the signal; the stop
  # comes a dispatch or two (one step each) after it, far from the epoch's end (250).
  assert seen < stopped < seen + 60, (seen, stopped)
  assert _steps(workdir)[-1] == stopped


# 4-5. Integrity and quarantine (the Checkpointer on real orbax files).

def _tiny_state():
  import jax  # pylint: disable=g-import-not-at-top
  model = get_model("mlp_1x512", num_classes=10)
  return step_lib.create_train_state(jax.random.PRNGKey(0), model, (4, 4, 1),
                                     optax.sgd(0.1, momentum=0.9))


def _saved(tmp_path, steps=(1, 2)):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5)
  state = _tiny_state()
  for s in steps:
    state = state.replace(step=s)
    ckpt.save(state, {"best_test_accuracy": 0.1 * s, "best_epoch": s})
    ckpt.wait()
  ckpt.close()
  return state


def test_checksum_covers_meta(tmp_path, caplog):
  state = _saved(tmp_path)
  meta = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
  text = meta.read_text()
  assert '"best_test_accuracy": 0.2' in text
  meta.write_text(text.replace('"best_test_accuracy": 0.2', '"best_test_accuracy": 0.9'))
  json.loads(meta.read_text())  # Still valid JSON: only the checksum can tell.
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  restored_state, restored = ckpt.restore_latest_good(state)
  ckpt.close()
  assert int(restored_state.step) == 1 and restored["best_test_accuracy"] == 0.1
  assert (tmp_path / "checkpoints_corrupt" / "2").exists()
  lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(lines) == 1 and "checksum" in lines[0] and "falling back to step 1" in lines[0]


def test_a_tampered_structure_in_meta_is_damage_not_a_model_change(tmp_path, caplog):
  """meta's structure digest edited (valid JSON): the checksum shows the checkpoint damaged,
  so the run falls back to the previous one instead of refusing 'a different model'."""
  state = _saved(tmp_path)
  meta = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
  saved = json.loads(meta.read_text())
  digest = saved["structure"]["digest"]
  meta.write_text(meta.read_text().replace(digest, "0" * len(digest)))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  restored_state, _ = ckpt.restore_latest_good(state)
  ckpt.close()
  assert int(restored_state.step) == 1 and (tmp_path / "checkpoints_corrupt" / "2").exists()
  lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(lines) == 1 and "checksum" in lines[0]


def test_quarantine_names_are_unique_and_every_fallback_says_so(tmp_path, caplog):
  state = _tiny_state()
  for attempt in range(3):  # The same step damaged three times.
    _saved(tmp_path, steps=(1, 2)) if attempt == 0 else None
    if attempt:
      ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5)
      ckpt.save(state.replace(step=2), {"best_epoch": 2})
      ckpt.close()
    data = max((tmp_path / "checkpoints" / "2" / "state").rglob("*"),
               key=lambda p: p.stat().st_size if p.is_file() else -1)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3:len(raw) // 3 + 512] = np.random.default_rng(attempt).integers(
        0, 256, 512, dtype=np.uint8).tobytes()
    data.write_bytes(bytes(raw))
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    restored_state, _ = ckpt.restore_latest_good(state)
    ckpt.close()
    assert int(restored_state.step) == 1
  corrupt = sorted(p.name for p in (tmp_path / "checkpoints_corrupt").iterdir())
  assert corrupt == ["2", "2.1", "2.2"]
  assert not (tmp_path / "checkpoints_corrupt" / "2" / "2").exists()
  lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(lines) == 3
  for line in lines:  # Whole: no TensorStore repr tail, no cut.
    assert "<bound method" not in line and "See full TensorStore" not in line
    assert line.endswith("falling back to step 1.")
  # Both damaged: one line saying the run starts from step 0.
  shutil.rmtree(tmp_path / "checkpoints" / "1" / "state")
  caplog.clear()
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.restore_latest_good(state) is None
  ckpt.close()
  lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(lines) == 1 and "starting from step 0" in lines[0]


def test_damage_handled_without_tracebacks_and_every_fallback_said(tmp_path, two_epochs):
  """The newest step directory deleted, random bytes over the other one's data file:
  each said in one line, without TensorStore or asyncio noise; rows set aside."""
  workdir = _copy(two_epochs, tmp_path / "run")
  shutil.rmtree(workdir / "checkpoints" / "8")
  data = max((workdir / "checkpoints" / "4" / "state").rglob("*"),
             key=lambda p: p.stat().st_size if p.is_file() else -1)
  raw = bytearray(data.read_bytes())
  raw[100:4196] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
  data.write_bytes(bytes(raw))
  proc = _cli(workdir, num_epochs=1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for noise in ("Traceback", "Event loop is closed", "Exception ignored", "<bound method"):
    assert noise not in proc.stderr, proc.stderr[-3000:]
  said = [l for l in proc.stderr.splitlines() if "damaged" in l or "metrics_dropped" in l]
  assert len(said) == 2, said
  assert "Checkpoint at step 4 is damaged" in said[0]
  assert said[0].endswith("no other checkpoint: starting from step 0.")
  assert "rows up to step 8" in said[1] and "newest intact checkpoint is at step 0" in said[1]
  assert [r["epoch"] for r in read_metrics(workdir)] == [1]
  assert len((workdir / "metrics_dropped.jsonl").read_text().splitlines()) == 2


# 6. Config drift on resume.

def test_every_config_field_is_classified_for_resume():
  from rethinking import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  fields = set()
  for name, args in (("cifar10", ("", "runlocal", "quickstart", "model=mlp_1x512,p=0.3,fit")),
                     ("imagenet", ("", "runlocal", "labels=random,aug,dropout,wd"))):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in args:
      fields |= set(module.get_config(arg))
  may, may_not = set(workdir_lib.MAY_CHANGE), set(workdir_lib.MAY_NOT_CHANGE)
  assert not may & may_not
  assert fields - may - may_not == set(), "classify these in workdir.py"
  assert set(workdir_lib.STRUCTURAL) <= may_not


@pytest.mark.parametrize("field,value", [
    ("learning_rate", 0.5), ("momentum", 0.0), ("lr_decay", 0.5), ("half_precision", True),
    ("bn_momentum", 0.9), ("eval_batch_size", 50), ("eval_train", False),
    ("weight_decay", 1e-4)])
def test_resume_refuses_a_trajectory_change(tmp_path, two_epochs, field, value):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from rethinking import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  saved = json.loads((two_epochs / "config.json").read_text())
  config = ml_collections.ConfigDict(dict(saved, **{field: value}))
  with pytest.raises(ValueError, match=rf"{field}: .* in the workdir, {value!r} now"):
    workdir_lib.check_resumable(config, str(two_epochs))
  config.allow_config_change = True
  workdir_lib.check_resumable(config, str(two_epochs))  # Allowed, and recorded by the run.
  # May change: a run moved to a GPU takes its fused steps (the same steps, batches and
  # keys) and shares it with others; the train set's eval cadence is only reporting.
  config = ml_collections.ConfigDict(dict(saved, num_epochs=9, log_every_steps=3,
                                          steps_per_dispatch=16, eval_train_every_epochs=5,
                                          memory_fraction=0.3))
  workdir_lib.check_resumable(config, str(two_epochs))
  # An auto precision (None) resumes with the run's own (as a sweep checks its jobs).
  config = ml_collections.ConfigDict(dict(saved, half_precision=None))
  workdir_lib.check_resumable(config, str(two_epochs))


def test_allowed_change_goes_to_history_and_model_change_is_refused(tmp_path, two_epochs):
  workdir = _copy(two_epochs, tmp_path / "run")  # (Refusal without the switch: above.)
  _cli(workdir, check=True, num_epochs=3, learning_rate=0.005, allow_config_change=True)
  config = json.loads((workdir / "config.json").read_text())
  assert config["learning_rate"] == 0.01 and config["num_epochs"] == 3  # lr not rewritten.
  (entry,) = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert entry["step"] == 8 and entry["changed"]["learning_rate"] == [0.01, 0.005]
  rows = read_metrics(workdir)
  assert [r["learning_rate"] for r in rows] == pytest.approx([0.01, 0.0095, 0.005 * 0.95**2])

  # A model change: one line, exit 2, even with allow_config_change; nothing moved.
  steps = _steps(workdir)
  model_flags = ["--config=configs/cifar10.py:model=mlp_3x512,corruption=random_labels",
                 f"--workdir={workdir}"]
  proc = subprocess.run([sys.executable, "-m", "rethinking.main", *model_flags,
                         *_flags(num_epochs=4, learning_rate=0.005, allow_config_change=True)],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  (line,) = _errors(proc.stderr)
  assert "model: 'mlp_1x512' in the workdir, 'mlp_3x512' now" in line
  # config.json deleted: the checkpoints themselves tell the model apart.
  (workdir / "config.json").unlink()
  proc = subprocess.run([sys.executable, "-m", "rethinking.main", *model_flags,
                         *_flags(num_epochs=4)],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  (line,) = _errors(proc.stderr)
  assert "a different model" in line and "damaged" not in proc.stderr
  assert _steps(workdir) == steps and not (workdir / "checkpoints_corrupt").exists()
  assert [r["epoch"] for r in read_metrics(workdir)] == [1, 2, 3]


# 7. Divergence.

def _config(**overrides):
  spec = importlib.util.spec_from_file_location("cifar10_cfg", REPO / "configs" / "cifar10.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(ARG)
  config.update(dict(dict(dataset=str(CIFAR_NPZ), num_train=256, num_test=200, batch_size=64,
                          eval_batch_size=100, num_epochs=1, log_every_steps=2), **overrides))
  return config


def test_divergence_keeps_the_last_healthy_checkpoint_and_the_advice_works(tmp_path):
  require(CIFAR_NPZ)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_config(), workdir)  # One healthy epoch: checkpoint at step 4.
  with pytest.raises(loop.Diverged) as e:
    train.train_and_evaluate(_config(num_epochs=4, learning_rate=5.0,
                                     allow_config_change=True), workdir)
  message = str(e.value)
  assert "The last healthy checkpoint is step 4" in message
  assert "--config.learning_rate=0.5 --config.allow_config_change=True" in message
  assert _steps(workdir)[-1] == 4
  assert [r["step"] for r in read_metrics(workdir)] == [4]
  # The advice: resume from it with a lower learning rate.
  row = train.train_and_evaluate(_config(num_epochs=3, learning_rate=0.005,
                                         allow_config_change=True), workdir)
  assert row["epoch"] == 3 and np.isfinite(row["train_loss"]) and row["train_loss"] < 5


def test_divergence_without_a_checkpoint_says_so(tmp_path):
  require(CIFAR_NPZ)
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.Diverged, match="No checkpoint was saved before it"):
    train.train_and_evaluate(_config(num_epochs=2, learning_rate=1e6), workdir)
  assert _steps(workdir) == []
  # Nothing trained is kept, so the workdir takes the lower learning rate as is.
  row = train.train_and_evaluate(_config(num_epochs=1, learning_rate=0.01), workdir)
  assert row["epoch"] == 1


def test_a_torn_first_metrics_row_is_dropped_on_resume(tmp_path):
  """A kill while the first row was being written leaves a line without its newline; the
  resumed run must drop it (else every row after it is unreadable: line 1 fails to parse)."""
  from rethinking import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  path = tmp_path / metrics_lib.METRICS_FILE
  path.write_text('{"epoch": 1, "st')
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.truncate_after(0)
  writer.write({"epoch": 1, "step": 8, "train_loss": 2.0})
  writer.close()
  assert read_metrics(tmp_path) == [{"epoch": 1, "step": 8, "train_loss": 2.0}]


def test_orbax_coroutines_finalized_with_their_error_are_dropped_others_kept(monkeypatch):
  """After a damaged read, orbax's sibling read coroutines raise again when collected
  ("Exception ignored in: <coroutine ...>"): dropped; anything else still reported."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)

  def unraisable(filename):
    try:
      exec(compile("raise RuntimeError('read failed')", filename, "exec"))
    except RuntimeError as e:
      return type("Unraisable", (), {"exc_traceback": e.__traceback__, "exc_value": e})()

  checkpoint._drop_orbax_unraisable()
  checkpoint._drop_orbax_unraisable()  # Installed once per process, not wrapped twice.
  sys.unraisablehook(unraisable("/site-packages/orbax/checkpoint/serialization.py"))
  ours = unraisable("/repo/rethinking/loop.py")
  sys.unraisablehook(ours)
  assert seen == [ours]


def test_the_orbax_log_filters_do_not_pile_up_across_checkpointers(tmp_path):
  import logging  # pylint: disable=g-import-not-at-top
  for _ in range(3):
    checkpoint.Checkpointer(str(tmp_path)).close()
  quiet = [f for f in logging.getLogger("asyncio").filters
           if isinstance(f, checkpoint._OrbaxErrors)]  # pylint: disable=protected-access
  assert len(quiet) == 1  # Kept after close (late asyncio reports), but once.
  assert not [f for f in logging.getLogger("absl").filters
              if isinstance(f, checkpoint._OrbaxErrors)]  # pylint: disable=protected-access
