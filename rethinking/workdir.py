"""Owning a workdir: one writer at a time, and resume only into the same experiment."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os

import ml_collections

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
# Fields that define what is being trained. Changing one of them mid-run would
# silently mix two experiments in one metrics.jsonl; everything else (epochs,
# logging, checkpoint cadence, steps per dispatch, ...) may change on resume.
IDENTITY_FIELDS = ("dataset", "num_train", "num_test", "corruption", "corrupt_prob",
                   "corrupt_force_different", "model", "seed", "batch_size", "image_size",
                   "augment", "weight_decay", "dropout_rate")


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


def check_resumable(config: ml_collections.ConfigDict, workdir: str, fields=IDENTITY_FIELDS) -> None:
  """Refuses to continue a workdir written by a different experiment.

  Raises:
    ValueError: naming each differing field, its saved and its new value.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path) or config.get("allow_config_change", False):
    return
  with open(path) as f:
    saved = json.load(f)
  diffs = [f"{k}: {saved[k]!r} in the workdir, {config[k]!r} now" for k in fields
           if k in saved and k in config and saved[k] != config[k]]
  if diffs:
    raise ValueError(f"workdir {workdir} holds a different run ({'; '.join(diffs)}). "
                     "Use a new --workdir, or pass --config.allow_config_change=True to "
                     "continue it with the new settings.")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))
