"""SIGTERM/SIGINT as a request to stop cleanly: save what there is, flush, exit 75.

Clusters preempt with SIGTERM (SLURM, Kubernetes, Cloud TPU maintenance); a user
presses Ctrl-C. Either way the handler only records the signal; the run sees it at
its next check and raises `Preempted` (after saving a checkpoint, if it has trained
since the last one); the command exits with `PREEMPTED_EXIT_CODE` and the same
command later continues from there. A signal that arrives once the run is done
changes nothing: the command exits 0.

`install()` makes this hold for the whole process (the command line calls it
first thing, so a signal during startup is a clean exit 75, not a kill);
`PreemptionGuard` holds it for a block (a library caller's run) and restores the
previous handlers after. A third signal falls back to the default action, so a
stuck process can still be stopped from the keyboard.

This module imports nothing heavy (no jax at import), so it can be installed
before the slow imports of a run.
"""

from __future__ import annotations

import signal
import threading

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", what a requeue wrapper looks for.
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[str] = []  # Names of the signals received, in order.
_installed = False  # Process-wide (install), as opposed to a guard's block.
_depth = 0  # Guards entered and not yet exited.


class Preempted(Exception):
  """The run stopped on a signal after saving; rerun the command to continue."""


def _handle(signum, frame):
  del frame
  _received.append(signal.Signals(signum).name)
  if len(_received) >= 3:  # Asked three times: stop waiting for a clean exit.
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def install() -> None:
  """Records SIGTERM and SIGINT for the rest of the process (main thread only)."""
  global _installed
  if threading.current_thread() is threading.main_thread():
    for sig in SIGNALS:
      signal.signal(sig, _handle)
    _installed = True


def signal_name() -> str | None:
  """The first signal received, or None."""
  return _received[0] if _received else None


def check(where: str) -> None:
  """Raises Preempted if a signal arrived (for points where nothing needs saving)."""
  if _received:
    raise Preempted(f"{_received[0]} {where}")


def reset() -> None:
  """Forgets received signals (tests running several runs in one process)."""
  _received.clear()


class PreemptionGuard:
  """Records SIGTERM and SIGINT for the duration of a `with` block."""

  def __init__(self):
    self._previous = {}

  @property
  def signal_name(self) -> str | None:
    return signal_name()

  def __enter__(self):
    global _depth
    if not _installed and _depth == 0:
      reset()  # A library caller's new run: an earlier run's signal was handled.
    _depth += 1
    if not _installed and threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, _handle)
    return self

  def __exit__(self, *exc):
    global _depth
    _depth -= 1
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def stop_requested(self, collective: bool = True) -> bool:
    """True once a signal arrived. With several processes all must stop at the same
    step, so they only agree at `collective` points (one allgather each, at log
    intervals); elsewhere this is False there."""
    import jax  # pylint: disable=g-import-not-at-top
    local = bool(_received)
    if jax.process_count() == 1:
      return local
    if not collective:
      return False
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))
