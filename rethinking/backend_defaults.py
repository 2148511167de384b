"""Config fields whose default depends on the backend: fused steps and bfloat16 ("auto").

The configs leave `steps_per_dispatch` at 0 and `half_precision` at None (auto);
`train.train_and_evaluate` resolves both once, at the run's start, and the run
records the resolved values (config.json, the logged config), so its files say
what it trained with:

- steps_per_dispatch: 1 on a CPU, where XLA runs a convolution's gradient inside
  `lax.scan` ~20x slower than outside it (train.train_steps); FUSED_STEPS on a GPU
  or TPU, where a small model's step is short and one call per step leaves the
  device waiting on the host. May change on resume (workdir.MAY_CHANGE): a run
  moved to another backend takes that backend's value.
- half_precision: bfloat16 compute (float32 parameters) on a GPU or TPU, whose
  matrix units run it at 2x or more of float32; float32 on a CPU, where most
  CPUs have no bfloat16 arithmetic. A resume keeps what the run trained with
  (a different precision is a different experiment), wherever it resumes.

An explicit value (`--config.half_precision=False`, `--config.steps_per_dispatch=4`)
is used as given.
"""

from __future__ import annotations

import copy
from typing import Any

from absl import logging
import jax
import ml_collections

# An unmeasured estimate (no accelerator yet, issue 16): enough steps per call to
# hide the host's per-call work behind a small model's step on an H100/H200, few
# enough that a log interval of 50 steps still ends near its boundary. Measure with
# launch/device_check.sh and replace.
FUSED_STEPS = 16


def _backend(backend: str | None) -> str:
  return backend or jax.default_backend()


def steps_per_dispatch(config: ml_collections.ConfigDict, backend: str | None = None) -> int:
  """config.steps_per_dispatch, or for 0 (auto) the backend's value."""
  k = config.get("steps_per_dispatch", 1)
  if k:
    return k
  return 1 if _backend(backend) == "cpu" else FUSED_STEPS


def half_precision(config: ml_collections.ConfigDict, backend: str | None = None) -> bool:
  """config.half_precision, or for None (auto) the backend's value."""
  value = config.get("half_precision")
  if value is not None:
    return value
  return _backend(backend) != "cpu"


def resolve(config: ml_collections.ConfigDict, recorded: dict[str, Any] | None = None,
            backend: str | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` with the auto fields resolved (the input is left as it is).

  Args:
    config: a validated config.
    recorded: the config the workdir's run trained with so far (None for a new
      run): an auto `half_precision` keeps its value there.
    backend: for tests; default `jax.default_backend()`.
  """
  resolved = copy.deepcopy(config)
  if "steps_per_dispatch" in config:
    resolved.steps_per_dispatch = steps_per_dispatch(config, backend)
  if "half_precision" in config and config.half_precision is None:
    kept = (recorded or {}).get("half_precision")
    resolved.half_precision = kept if kept is not None else half_precision(config, backend)
    if kept is not None:
      logging.info("half_precision (auto) = %s, as the workdir's run trained so far.", kept)
  return resolved
