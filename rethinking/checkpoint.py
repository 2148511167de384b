"""Orbax checkpoints of a run: the train state plus the bookkeeping to continue exactly.

Each checkpoint (a step directory under <workdir>/checkpoints) holds two items:
  state: params, optimizer state, BatchNorm statistics and step (a nested dict of
         arrays; flax.serialization maps it back onto a TrainState);
  meta:  JSON: epoch, best test accuracy and its epoch, wall time so far, the
         running train-metric sums of a partially finished epoch, the metrics row
         of the epoch it ends (if any), the shapes of the state, and `checksum`: a
         sha256 of the state's arrays *and* of every other meta field.
The data order and every RNG stream are pure functions of (seed, step), so the
step *is* the position in the data and the RNG state.

Writing. A save takes host copies of the state, then a background thread of ours
runs orbax's *synchronous* save, so the next steps run while it is written (in a
single-process run; with several processes the save blocks, see `save`). Not
orbax's own asynchronous mode: there, a failed write (read-only directory, full
disk) is only logged by its finalize thread, which still deletes the old
checkpoints it meant to replace, and a failure while creating the directory
leaves its other threads waiting for minutes (the process did not exit). The
synchronous save raises on the thread that ran it; `wait` hands the error to the
caller as a `WriteError` naming the path and the cause; older checkpoints are
deleted only after a newer one is complete. Orbax writes a checkpoint into
`<step>.orbax-checkpoint-tmp*` and renames it when complete; a leftover one (a
killed run) is removed when the next run starts.

Reading. `restore_latest_good` tries the newest checkpoint first. One that fails
to restore or fails its checksum is damaged: it is moved to
<workdir>/checkpoints_corrupt/<step> (<step>.1, <step>.2, ... if that name is
taken; nothing is deleted), one line says so, and the previous one is tried. A
checkpoint of a different model (other parameter shapes) is not damage: restore
raises `ModelMismatch` and touches nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging as logging_lib
import os
import re
import shutil
import sys
import threading
import traceback
from typing import Any

from absl import logging
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from rethinking import workdir as workdir_lib

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
TMP_MARK = ".orbax-checkpoint-tmp"


WriteError = workdir_lib.WriteError  # A failed write: the command exits 1.


class ModelMismatch(ValueError):
  """The checkpoints hold a state of a different shape than the config's model."""


def state_digest(state_dict) -> str:
  """sha256 of every array of a state dict, in tree order (detects damaged files)."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(state_dict):
    leaf = np.asarray(leaf)
    # Scalars by value: `step` is saved as an int32 array and restored as a Python int.
    h.update(repr(leaf.item()).encode() if leaf.ndim == 0 else np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def checksum(state_dict, meta: dict[str, Any]) -> str:
  """sha256 over the state's arrays and every meta field (canonical JSON, sorted keys).

  JSON floats round-trip exactly (repr), so the restored meta hashes as saved.
  """
  body = json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True)
  return hashlib.sha256((state_digest(state_dict) + body).encode()).hexdigest()


def structure(state_dict) -> dict[str, Any]:
  """What a checkpoint must match to be restored onto a model: its arrays' shapes."""
  flat = flax.traverse_util.flatten_dict(state_dict, sep="/")
  shapes = {k: list(np.shape(v)) for k, v in sorted(flat.items())}
  digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
  return {"digest": digest, "arrays": len(shapes),
          "values": int(sum(int(np.prod(s)) for s in shapes.values()))}


def describe_error(e: BaseException) -> str:
  """One whole line for an I/O or restore error: the OS's reason where one is known.

  TensorStore's messages carry the OS error inside brackets and end with a
  `See full TensorStore details: <bound method ...>` repr; that tail is dropped,
  never the message itself.
  """
  for c in _chain(e):
    if isinstance(c, OSError) and c.strerror:
      where = f": {c.filename}" if c.filename else ""
      return f"{c.strerror} [errno {c.errno}]{where}"
  text = " ".join(str(e).split())
  text = re.sub(r"\s*See full TensorStore details:.*$", "", text)
  code = re.search(r"os_error_code='?(\d+)", text)  # TensorStore's errno, e.g. 28.
  reason = f"{os.strerror(int(code.group(1)))} [errno {code.group(1)}]" if code else None
  message = f"{type(e).__name__}: {text}" if text else type(e).__name__
  return f"{reason} ({message})" if reason else message


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


class _OrbaxErrors(logging_lib.Filter):
  """Holds back orbax's logged tracebacks (ERROR records with exc_info) while a
  save or restore runs: the failure reaches the caller as one line instead. That
  includes asyncio's "Task exception was never retrieved" for orbax's own read tasks
  (seen 1 run in 4 restoring a damaged array). Other records pass."""

  def filter(self, record):
    if record.levelno >= logging_lib.ERROR and (
        "orbax" in record.pathname
        or (record.name == "asyncio" and _from_orbax(record))):
      return False
    return True


def _from_orbax(record: logging_lib.LogRecord) -> bool:
  """Whether a log record's message or exception traceback comes from orbax's code."""
  tb = record.exc_info[2] if record.exc_info else None
  files = [f.filename for f in traceback.extract_tb(tb)] if tb else []
  return any("orbax" in f for f in [record.getMessage(), *files])


def _drop_orbax_unraisable() -> None:
  """Wraps sys.unraisablehook to drop orbax's read coroutines finalized with their error.

  After a damaged array's read fails, the sibling reads (coroutines never awaited to
  the end) raise the same error when garbage-collected, which Python prints as
  "Exception ignored in: <coroutine ...>" with the traceback (seen 1 run in 7). The
  damage was already reported in one line; everything else goes to the hook in place.
  """
  hook = sys.unraisablehook
  if getattr(hook, "drops_orbax", False):
    return

  def quiet(unraisable):
    tb = unraisable.exc_traceback
    if tb is None or not any("orbax" in f.filename for f in traceback.extract_tb(tb)):
      hook(unraisable)

  quiet.drops_orbax = True
  sys.unraisablehook = quiet


# One filter for the process: added to a logger it already filters, it is not added again
# (the asyncio one stays after close, so a per-Checkpointer filter would pile up).
_QUIET = _OrbaxErrors()


class _DropClosedLoopNoise:
  """sys.stderr, minus one known traceback: `RuntimeError: Event loop is closed`.

  When a write fails (a full disk), orbax closes its event loop while TensorStore
  still completes the other writes; their callbacks then find the loop closed and
  TensorStore prints that traceback from its own thread, even after the failure
  was reported (sometimes at exit). Everything else passes through as written; a
  traceback is held only until its final line shows which one it is.
  """

  HEAD = "Traceback (most recent call last):"
  NOISE = "RuntimeError: Event loop is closed"

  def __init__(self, stream):
    self.stream = stream
    self.block: str | None = None

  def write(self, text: str) -> int:
    if self.block is None:
      i = text.find(self.HEAD)
      if i < 0:
        return self.stream.write(text)
      self.stream.write(text[:i])
      self.block = text[i:]
    else:
      self.block += text
    lines = self.block.split("\n")
    for j in range(1, len(lines) - 1):  # Complete lines after the head.
      if lines[j] and not lines[j].startswith(" "):  # The exception's own line.
        block, rest = "\n".join(lines[:j + 1]) + "\n", "\n".join(lines[j + 1:])
        self.block = None
        if lines[j].strip() != self.NOISE:
          self.stream.write(block)
        if rest:
          self.write(rest)
        break
    return len(text)

  def flush(self) -> None:
    if self.block is not None and not self.block.startswith(self.HEAD + "\n  File"):
      self.stream.write(self.block)
      self.block = None
    self.stream.flush()

  def __getattr__(self, name):
    return getattr(self.stream, name)


class Checkpointer:
  """(state, meta) checkpoints of a run, with write errors surfaced and damage handled."""

  def __init__(self, workdir: str, keep: int = 2):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           enable_async_checkpointing=False,
                                           create=False)
    self._quiet = _QUIET
    self._thread: threading.Thread | None = None
    self._error: tuple[int, BaseException] | None = None
    self._remove_leftovers()
    self._failed = False
    self._stderr = sys.stderr
    if not isinstance(sys.stderr, _DropClosedLoopNoise):
      sys.stderr = _DropClosedLoopNoise(sys.stderr)
    # Held until close: every orbax call of the run is ours, and each failure is
    # reported by us in one line (WriteError, or the damaged-checkpoint line).
    for name in ("absl", "asyncio"):
      logging_lib.getLogger(name).addFilter(self._quiet)
    _drop_orbax_unraisable()  # For the process, as the asyncio filter.
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  # Writing.

  def save(self, state, meta: dict[str, Any], test_accuracy: float | None = None) -> None:
    """Starts writing a checkpoint at state.step in the background (an epoch-end save
    carries test_accuracy). Raises WriteError if the previous save failed."""
    self.wait()
    # Host copies, taken now: the train step donates the state's device buffers, and
    # on CPU a background save would otherwise write arrays that later steps
    # overwrote in place (the checksum caught exactly that).
    state_dict = jax.tree_util.tree_map(np.array, flax.serialization.to_state_dict(state))
    meta = dict(meta, structure=structure(state_dict))
    meta["checksum"] = checksum(state_dict, meta)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state_dict),
                              meta=ocp.args.JsonSave(meta))
    metrics = None if test_accuracy is None else {"test_accuracy": float(test_accuracy)}
    step = int(state.step)
    if jax.process_index() == 0:
      try:
        os.makedirs(self.directory, exist_ok=True)
      except OSError as e:
        raise self._write_error(step, e) from None

    def write():
      try:
        self.manager.save(step, args=args, metrics=metrics, force=True)
      except BaseException as e:  # pylint: disable=broad-except  (reported by wait)
        self._error = (step, e)

    if jax.process_count() > 1:
      # Orbax's save runs collectives between the processes (Gloo on CPU); from a
      # second thread they would interleave with the steps' and mismatch across
      # processes (a crash, seen with two processes). So a multi-process save
      # blocks; its failure is raised by the `wait` that follows.
      write()
      self._thread = threading.Thread(target=lambda: None)
      self._thread.start()
      return
    # A daemon thread: a process that must exit never waits on a stuck write (the
    # loop always waits for it on its normal, preempted and failing paths).
    self._thread = threading.Thread(target=write, name=f"checkpoint_{step}", daemon=True)
    self._thread.start()

  def busy(self) -> bool:
    """Whether a save is still being written."""
    return self._thread is not None and self._thread.is_alive()

  def wait(self) -> None:
    """Waits for the save in flight; raises WriteError if it failed."""
    if self._thread is None:
      return
    self._thread.join()
    self._thread = None
    if self._error is not None:
      step, e = self._error
      self._error = None
      self._remove_leftovers()  # Frees the space a partial write took (a full disk).
      self._failed = True  # The filter stays: TensorStore's noise can come at exit.
      raise self._write_error(step, e) from None

  def _write_error(self, step: int, e: BaseException) -> WriteError:
    return WriteError(f"cannot write the checkpoint of step {step} to {self.directory}: "
                      f"{describe_error(e)}. Nothing after the checkpoint of step "
                      f"{self.last_saved_step()} is kept; free space or fix the directory, "
                      "then run the same command to continue from there.")

  def last_saved_step(self) -> str:
    """The newest complete checkpoint on disk, for messages."""
    steps = self.steps()
    return str(max(steps)) if steps else "(none)"

  def _remove_leftovers(self) -> None:
    """Removes `<step>.orbax-checkpoint-tmp*` directories: unfinished writes of a
    killed or failed run. Never a finished checkpoint."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if TMP_MARK in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  # Reading.

  def steps(self) -> list[int]:
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def read_meta(self, step: int) -> dict[str, Any]:
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore(self, state, step: int):
    """Restores (state, meta) from `step` onto a template state.

    Raises:
      ModelMismatch: the checkpoint holds a state of other shapes (a different model).
      Exception: anything else means the checkpoint is damaged.
    """
    template = flax.serialization.to_state_dict(state)
    expected = structure(template)
    meta = self.read_meta(step)
    saved = meta.get("structure")
    if saved is not None and saved.get("digest") != expected["digest"]:
      self._check_intact(step)  # A damaged meta can claim any structure: damage first.
      raise ModelMismatch(
          f"the checkpoint of step {step} in {self.directory} holds a state of "
          f"{saved.get('values')} values in {saved.get('arrays')} arrays; the config's model "
          f"has {expected['values']} in {expected['arrays']}: a different model. Use a new "
          "--workdir for a different model (the checkpoints are left as they are).")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    meta = dict(restored["meta"])
    if "checksum" in meta:
      if meta["checksum"] != checksum(restored["state"], meta):
        raise ValueError("the checksum over its state and meta does not match the one saved "
                         "with it")
    elif meta.pop("state_sha256", None) != state_digest(restored["state"]):
      # Checkpoints written before the checksum covered meta: the state alone.
      raise ValueError("the state's checksum does not match the one saved with it")
    meta.pop("checksum", None)
    meta.pop("structure", None)
    return flax.serialization.from_state_dict(state, restored["state"]), meta

  def _check_intact(self, step: int) -> None:
    """Restores `step` without a template and checks its checksum (raises ValueError if it
    does not match): only an intact checkpoint can tell that the model differs."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    meta = dict(restored["meta"])
    if "checksum" in meta and meta["checksum"] != checksum(restored["state"], meta):
      raise ValueError("the checksum over its state and meta does not match the one saved "
                       "with it")

  def restore_latest_good(self, state):
    """(state, meta) from the newest checkpoint that restores intact, or None if none does.

    Damaged checkpoints are moved aside (never deleted), one line each, before
    falling back to the previous one.

    Raises:
      ModelMismatch: from `restore`; nothing is moved.
      WriteError: a damaged checkpoint could not be moved aside (its directory is
        read-only): the run cannot write checkpoints there either.
    """
    steps = self.steps()
    for i, step in enumerate(reversed(steps)):
      try:
        return self.restore(state, step)
      except ModelMismatch:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any failure = unusable)
        previous = steps[-i - 2] if i + 1 < len(steps) else None
        dest = self._quarantine(step, e)
        then = (f"falling back to step {previous}" if previous is not None else
                "no other checkpoint: starting from step 0")
        logging.error("Checkpoint at step %d is damaged (%s); moved to %s; %s.", step,
                      describe_error(e), dest, then)
        self.manager.reload()
    return None

  def set_aside(self, first: int, folder: str) -> list[int]:
    """Moves the checkpoints of steps >= `first` to <workdir>/<folder>/ (diverged
    states: kept for a look, never restored); returns their steps."""
    moved = [s for s in self.steps() if s >= first]
    for step in moved:
      self._move(step, folder, "of a diverged state")
    if moved:
      self.manager.reload()
    return moved

  def _quarantine(self, step: int, error: BaseException) -> str:
    return self._move(step, CORRUPT_DIR, f"is damaged ({describe_error(error)}) and")

  def _move(self, step: int, folder: str, why: str) -> str:
    """Moves a step directory to a fresh name under <workdir>/<folder>."""
    src = os.path.join(self.directory, str(step))
    base = os.path.join(self.workdir, folder, str(step))
    dest, n = base, 0
    while os.path.lexists(dest):  # Damaged again later: never into the older copy.
      n += 1
      dest = f"{base}.{n}"
    if jax.process_index() != 0:
      return dest
    try:
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      os.rename(src, dest)  # Same filesystem: atomic, nothing copied.
    except OSError as e:
      if e.errno != 18:  # EXDEV: checkpoints/ is a separate mount; copy, then delete.
        raise WriteError(f"the checkpoint of step {step} {why} cannot be moved from {src} "
                         f"to {dest}: {describe_error(e)}") from None
      try:
        shutil.copytree(src, dest)
        shutil.rmtree(src)
      except OSError as e2:
        raise WriteError(f"the checkpoint of step {step} {why} cannot be moved from {src} "
                         f"to {dest}: {describe_error(e2)}") from None
    return dest

  def close(self) -> None:
    """Waits for the save in flight (raises WriteError if it failed) and closes."""
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      finally:
        # asyncio's report of an orbax read task can come at garbage collection, after
        # close: that filter and the unraisable hook stay (they drop only orbax's).
        logging_lib.getLogger("absl").removeFilter(self._quiet)
        if not self._failed and isinstance(sys.stderr, _DropClosedLoopNoise):
          sys.stderr = self._stderr
