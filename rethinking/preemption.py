"""SIGTERM/SIGINT as a request to stop cleanly: finish the step, save, flush, exit.

Clusters preempt with SIGTERM (SLURM, Kubernetes, Cloud TPU maintenance); a user
presses Ctrl-C. Either way the loop sees `stop_requested()` at its next check,
saves a checkpoint and raises `Preempted`; the command exits with
`PREEMPTED_EXIT_CODE` and the same command later continues from there.
"""

from __future__ import annotations

import signal

import jax
import numpy as np

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", what a requeue wrapper looks for.


class Preempted(Exception):
  """The run stopped on a signal after saving; rerun the command to continue."""


class PreemptionGuard:
  """Turns SIGTERM and SIGINT into a flag for the duration of a `with` block."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def __enter__(self):
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def stop_requested(self, collective: bool = True) -> bool:
    """True once a signal arrived. With several processes all must stop at the same
    step, so they only agree at `collective` points (one allgather each, at log
    intervals); elsewhere this is False there."""
    local = self.signal_name is not None
    if jax.process_count() == 1:
      return local
    if not collective:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))
