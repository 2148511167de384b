"""Orbax checkpoints of a run: the train state plus the bookkeeping to continue exactly.

Each checkpoint (a step directory under <workdir>/checkpoints) holds two items:
  state: params, optimizer state, BatchNorm statistics and step (a nested dict of
         arrays; flax.serialization maps it back onto a TrainState);
  meta:  JSON: epoch, best test accuracy and its epoch, wall time so far, and the
         running train-metric sums of a partially finished epoch.
The data order and every RNG stream are pure functions of (seed, step), so the
step *is* the position in the data and the RNG state.

Saving is asynchronous (the next steps run while it is written). Kept: the latest
`keep` checkpoints and the best by test accuracy.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

CHECKPOINT_DIR = "checkpoints"


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
    self.manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                                         options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state, meta: dict[str, Any], test_accuracy: float | None = None) -> None:
    """Starts an asynchronous save at state.step (an epoch-end save carries test_accuracy)."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        meta=ocp.args.JsonSave(meta))
    metrics = None if test_accuracy is None else {"test_accuracy": float(test_accuracy)}
    self.manager.save(int(state.step), args=args, metrics=metrics, force=True)

  def restore(self, state, step: int | None = None):
    """Restores (state, meta) from `step` (default: the latest) onto a template state."""
    step = self.latest_step() if step is None else step
    template = flax.serialization.to_state_dict(state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    return flax.serialization.from_state_dict(state, restored["state"]), dict(restored["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
