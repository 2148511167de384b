"""How the bench measures: medians of synchronized calls, XLA's FLOP counts, a matmul peak,
and a failing measurement recorded rather than raised.

Every measurement of the package goes through `time_calls` with a `Budget`, so a
figure is always a median over calls that were each waited for (`block_until_ready`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from absl import app
import numpy as np


@dataclasses.dataclass(frozen=True)
class Budget:
  """How long to time each measurement (the bench's --steps, --warmup, --min_seconds,
  --max_seconds)."""

  steps: int = 10
  warmup: int = 2
  min_seconds: float = 2.0
  max_seconds: float = 15.0


def block(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(tree)


@dataclasses.dataclass
class Timing:
  """Seconds per call: median (the figure reported), min, and how many were timed."""

  median: float
  min: float
  n: int

  def row(self, images_per_call: int, steps_per_call: int = 1) -> dict[str, float]:
    return {"step_ms": 1e3 * self.median / steps_per_call,
            "images_per_s": images_per_call / self.median, "min_step_ms":
            1e3 * self.min / steps_per_call, "timed_calls": self.n}


def time_calls(call: Callable[[], Any], steps: int, warmup: int, max_seconds: float,
               min_seconds: float = 0.0) -> Timing:
  """Times `call()` (which must return something to block on) after `warmup` calls:
  at least `steps` calls and `min_seconds`, at most `max_seconds` (once 3 are timed)."""
  for _ in range(warmup):
    block(call())
  times, start = [], time.perf_counter()
  while len(times) < max(steps, 1) or time.perf_counter() - start < min_seconds:
    t = time.perf_counter()
    block(call())
    times.append(time.perf_counter() - t)
    if len(times) >= min(3, steps) and time.perf_counter() - start > max_seconds:
      break
  return Timing(float(np.median(times)), float(np.min(times)), len(times))


def time_budget(call: Callable[[], Any], budget: Budget, steps: int | None = None,
                warmup: int | None = None) -> Timing:
  """`time_calls` with a budget's limits (steps and warm-up overridable)."""
  return time_calls(call, budget.steps if steps is None else steps,
                    budget.warmup if warmup is None else warmup, budget.max_seconds,
                    budget.min_seconds)


def carrying(fn: Callable[..., Any], holder: dict[str, Any], *args) -> Callable[[], Any]:
  """A no-argument call of fn(state, sums, *args) -> (state, sums), as the training
  loop makes it: both donated, so `holder` keeps the current ones; returns the sums
  (to block on)."""
  def call():
    holder["state"], holder["sums"] = fn(holder["state"], holder["sums"], *args)
    return holder["sums"]
  return call


def flops(compiled_or_lowered) -> float | None:
  """XLA's cost analysis: FLOPs of one call (None where XLA gives no positive count)."""
  analysis = compiled_or_lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per computation.
    analysis = analysis[0] if analysis else {}
  count = (analysis or {}).get("flops")
  return float(count) if count and count > 0 else None


def matmul_peak(n: int = 2048, steps: int = 10) -> dict[str, float]:
  """Float32 GFLOP/s of an n^3 matmul: the practical peak of this device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((n, n)), jnp.float32) for _ in range(2))
  f = jax.jit(jnp.dot)
  t = time_calls(lambda: f(a, b), steps, 2, 30.0)
  return {"n": n, "median_s": t.median, "gflops": 2 * n**3 / t.median / 1e9,
          "gflops_best": 2 * n**3 / t.min / 1e9}


def guarded(fn: Callable[[], dict], **context) -> dict:
  """fn()'s result, or the error (one section failing does not lose the others)."""
  try:
    return fn()
  except app.UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    return dict(context, error=repr(e))
