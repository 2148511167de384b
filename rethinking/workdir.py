"""Owning a workdir: one writer at a time, and resume only into the same experiment."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

import ml_collections

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


class WriteError(RuntimeError):
  """A write into the workdir failed (read-only, full, over quota, I/O error).

  A RuntimeError, so the command line exits 1 (a failed run), not 2 (bad input).
  """

# Every config field (configs/cifar10.py and configs/imagenet.py), classified for
# resume. A field that changes what the steps compute, or the numbers a row
# reports (even in the last digits), may not change within a run: the metrics
# would mix two experiments. tests/test_faults.py fails on a field missing here.
MAY_NOT_CHANGE = (
    # The data and its randomization test.
    "dataset", "num_train", "num_test", "corruption", "corrupt_prob",
    "corrupt_force_different", "data_seed", "resize", "image_size", "augment",
    "rotation_degrees", "pipeline",
    # The model and its regularizers.
    "model", "aux_loss_weight", "weight_decay", "dropout_rate", "bn_momentum",
    "bn_sync", "half_precision",
    # Optimization: the trajectory itself.
    "batch_size", "base_batch_size", "learning_rate", "lr_decay", "momentum", "seed",
    # Evaluation: batch sums round differently (test_loss's last digits), and
    # eval_train decides what the fit criterion reads.
    "eval_batch_size", "eval_train",
)
# What may change on resume: how long, when to stop, logging, checkpoint cadence,
# how often the training set is evaluated (rows without it hold no train_eval_*;
# a fit check's run evaluates it every epoch), where TFDS keeps its files, GPU
# memory, and this switch. And steps_per_dispatch: the same steps, batches and keys
# in any chunking (train.train_steps), rounded by another program (a conv net's
# last digits), as a resume on another backend is anyway; its default is per
# backend, so a run moved from a GPU to a CPU must be able to take 1.
MAY_CHANGE = ("num_epochs", "stop_at_train_accuracy", "stop_at_train_loss",
              "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "data_dir",
              "allow_config_change", "steps_per_dispatch", "eval_train_every_epochs",
              "memory_fraction")
# Never, even with allow_config_change: the checkpoints hold this model's parameters.
STRUCTURAL = ("model", "pipeline", "aux_loss_weight")


def check_path(workdir: str | None) -> None:
  """Checks, writing nothing, that `workdir` is or can become a writable directory.

  Raises:
    ValueError: naming the path and why it cannot hold a run (empty, a file, under
      a file, on a read-only filesystem or without write permission).
  """
  if not workdir:
    raise ValueError(f"--workdir={workdir or ''!r}: expected a directory path "
                     "(it is created if missing)")
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):  # The nearest ancestor that exists.
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
    raise ValueError(f"--workdir={workdir}: {what}; expected a directory")
  if not os.access(existing, os.W_OK | os.X_OK):  # access(2) reports EROFS for root too.
    where = "" if existing == path else f" (its existing parent {existing})"
    raise ValueError(f"--workdir={workdir}: not writable{where}: "
                     f"{_access_reason(existing)}; choose another --workdir")


def _access_reason(path: str) -> str:
  return "a read-only filesystem" if os.statvfs(path).f_flag & os.ST_RDONLY else \
      "permission denied"


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True):
  """Holds an exclusive lock on the workdir; a second process refuses to start.

  flock is released by the kernel when the process dies (SIGKILL included), so a
  crashed run never leaves a stale lock behind.
  """
  if not enabled:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      owner = f.read().strip() or "another process"
      raise RuntimeError(f"workdir {workdir} is in use by {owner}: two runs on one workdir "
                         "would corrupt each other; wait for it, stop it, or choose "
                         "another --workdir") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    f.flush()
    try:
      yield
    finally:
      f.truncate(0)
      fcntl.flock(f, fcntl.LOCK_UN)


def has_progress(workdir: str) -> bool:
  """Whether the workdir holds anything trained: a checkpoint or a metrics row."""
  ckpt = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt)):
    return True
  metrics = os.path.join(workdir, "metrics.jsonl")
  return os.path.exists(metrics) and os.path.getsize(metrics) > 0


def effective_config(workdir: str) -> dict | None:
  """The config the run's latest segment trained with: config.json, with the
  values that `allow_config_change` resumes changed (config_history.jsonl)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  for entry in read_history(workdir):
    saved.update({k: new for k, (_, new) in entry.get("changed", {}).items()})
  return saved


def read_history(workdir: str) -> list[dict]:
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  entries = []
  with open(path) as f:
    for line in f:
      try:
        entries.append(json.loads(line))
      except json.JSONDecodeError:  # A torn last line (killed mid-write).
        break
  return entries


def _diffs(saved: dict, config: ml_collections.ConfigDict, fields) -> dict:
  # A field left None (auto: half_precision) takes the workdir's value on resume
  # (backend_defaults.resolve), so it never differs; a sweep checks its jobs' configs
  # here before any run resolves them.
  return {k: (saved[k], config[k]) for k in fields
          if k in saved and k in config and config[k] is not None and saved[k] != config[k]}


def check_resumable(config: ml_collections.ConfigDict, workdir: str,
                    fields=MAY_NOT_CHANGE) -> None:
  """Refuses to continue a workdir's run with settings that change its trajectory.

  A workdir with nothing trained yet (no checkpoint, no metrics row) takes any
  config. Otherwise a field of `fields` that differs is refused, unless
  config.allow_config_change; a STRUCTURAL one (the model) is refused always.

  Raises:
    ValueError: one line naming each differing field, its saved and its new value.
  """
  saved = effective_config(workdir)
  if saved is None or not has_progress(workdir):
    return
  diffs = _diffs(saved, config, fields)
  structural = {k: v for k, v in diffs.items() if k in STRUCTURAL}
  if structural:
    raise ValueError(f"workdir {workdir} holds a run of another model ({_describe(structural)}); "
                     "a run cannot change its model (its checkpoints hold that model's "
                     "parameters): use a new --workdir. Nothing was changed.")
  if diffs and not config.get("allow_config_change", False):
    raise ValueError(f"workdir {workdir} holds a run with other settings ({_describe(diffs)}), "
                     "which would change what it trains or reports. Use a new --workdir, or "
                     "pass --config.allow_config_change=True to continue it with the new "
                     "settings (recorded in config_history.jsonl).")


def _describe(diffs: dict) -> str:
  return "; ".join(f"{k}: {old!r} in the workdir, {new!r} now" for k, (old, new) in diffs.items())


def record_config(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
  """Writes config.json, or records a resume's changes (process 0).

  A new run (nothing trained) writes config.json. A resume that changes settings
  appends {step, changed: {field: [old, new]}} to config_history.jsonl; config.json
  then takes the new values of MAY_CHANGE fields only (num_epochs, ...), so it
  keeps saying what the first segment trained with, and the history says from
  which step other values applied. Nothing is rewritten otherwise.
  """
  saved = effective_config(workdir)
  if saved is None or not has_progress(workdir):
    write_config(config, workdir)
    return
  new = json.loads(config.to_json())
  changed = {k: [saved.get(k), v] for k, v in sorted(new.items()) if saved.get(k) != v}
  if not changed:
    return
  entry = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed}
  _append_line(os.path.join(workdir, HISTORY_FILE), json.dumps(entry))
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    first = json.load(f)
  first.update({k: v for k, (_, v) in changed.items() if k in MAY_CHANGE or k not in first})
  _write_json_atomic(os.path.join(workdir, CONFIG_FILE), first)


def _append_line(path: str, line: str) -> None:
  with open(path, "a") as f:
    f.write(line + "\n")
    f.flush()
    os.fsync(f.fileno())


def _write_json_atomic(path: str, value: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)  # A kill leaves the old file or the new one.


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  _write_json_atomic(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json()))
