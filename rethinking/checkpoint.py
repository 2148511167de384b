"""Orbax checkpoints of a run: the train state plus the bookkeeping to continue exactly.

Each checkpoint (a step directory under <workdir>/checkpoints) holds two items:
  state: params, optimizer state, BatchNorm statistics and step (a nested dict of
         arrays; flax.serialization maps it back onto a TrainState);
  meta:  JSON: epoch, best test accuracy and its epoch, wall time so far, and the
         running train-metric sums of a partially finished epoch.
The data order and every RNG stream are pure functions of (seed, step), so the
step *is* the position in the data and the RNG state.

Saving is asynchronous (the next steps run while it is written). Kept: the latest
`keep` checkpoints and the best by test accuracy. Orbax writes each checkpoint to
a temporary directory and renames it when complete, and deletes old ones only
after that, so the last good checkpoint always survives a kill. A checkpoint that
is complete but damaged on disk (a truncated or overwritten file) fails to restore
or fails its checksum (a sha256 of the state saved in `meta`); restore then moves
it to <workdir>/checkpoints_corrupt/ and falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

from absl import logging
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"


def state_digest(state_dict) -> str:
  """sha256 of every array of a state dict, in tree order (detects damaged files)."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(state_dict):
    leaf = np.asarray(leaf)
    # Scalars by value: `step` is saved as an int32 array and restored as a Python int.
    h.update(repr(leaf.item()).encode() if leaf.ndim == 0 else np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


class Checkpointer:
  """A thin wrapper over ocp.CheckpointManager for (state, meta) pairs."""

  def __init__(self, workdir: str, keep: int = 2):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           enable_async_checkpointing=True)
    self.workdir = os.path.abspath(workdir)
    self.manager = ocp.CheckpointManager(os.path.join(self.workdir, CHECKPOINT_DIR),
                                         options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state, meta: dict[str, Any], test_accuracy: float | None = None) -> None:
    """Starts an asynchronous save at state.step (an epoch-end save carries test_accuracy)."""
    # Host copies, taken now: the train step donates the state's device buffers, and
    # on CPU an asynchronous save would otherwise write arrays that later steps
    # overwrote in place (the checksum below caught exactly that).
    state_dict = jax.tree_util.tree_map(np.array, flax.serialization.to_state_dict(state))
    meta = dict(meta, state_sha256=state_digest(state_dict))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state_dict),
                              meta=ocp.args.JsonSave(meta))
    metrics = None if test_accuracy is None else {"test_accuracy": float(test_accuracy)}
    self.manager.save(int(state.step), args=args, metrics=metrics, force=True)

  def restore(self, state, step: int):
    """Restores (state, meta) from `step` onto a template state; raises if damaged."""
    template = flax.serialization.to_state_dict(state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    meta = dict(restored["meta"])
    if meta.pop("state_sha256", None) != state_digest(restored["state"]):
      raise ValueError("the state's checksum does not match the one saved with it")
    return flax.serialization.from_state_dict(state, restored["state"]), meta

  def restore_latest_good(self, state):
    """(state, meta) from the newest checkpoint that restores intact, or None if none does.

    Damaged checkpoints are reported and moved aside (never deleted) before
    falling back to the previous one.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.restore(state, step)
      except Exception as e:  # pylint: disable=broad-except  (any failure = unusable)
        dest = os.path.join(self.workdir, CORRUPT_DIR, str(step))
        logging.error("Checkpoint at step %d is damaged (%s: %s); moving it to %s and "
                      "falling back to the previous one.", step, type(e).__name__,
                      str(e).splitlines()[0][:300] if str(e) else "", dest)
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(dest), exist_ok=True)
          shutil.move(os.path.join(self.workdir, CHECKPOINT_DIR, str(step)), dest)
        self.manager.reload()
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
