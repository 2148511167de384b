"""A real training epoch: `loop.run` (logging, host syncs, checkpoints, evaluation) timed epoch
by epoch, against the same steps dispatched back to back; and a paper-length run extrapolated
from a few real epochs.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pathlib
import time
from typing import Any, Callable

import numpy as np

from rethinking.bench import tasks
from rethinking.bench import timing
from rethinking.bench.timing import Budget


class TimedEvaluation:
  """A Task that times its evaluations, so they can be taken out of the epoch's wall
  time, and runs `between()` after each, inside the time taken out."""

  def __init__(self, task, between: Callable[[], None] | None = None):
    self._task, self._between, self.eval_seconds = task, between, []

  def __getattr__(self, name):
    return getattr(self._task, name)

  def train(self, state, sums, step, num_steps):
    return self._task.train(state, sums, step, num_steps)

  def evaluate(self, state, *args, **kwargs):
    t = time.perf_counter()
    row = self._task.evaluate(state, *args, **kwargs)
    if self._between:
      self._between()
    self.eval_seconds.append(time.perf_counter() - t)
    return row


def run_quietly(config, workdir: pathlib.Path, task) -> list[float]:
  """`loop.run` in a new `workdir` without its progress bar and log lines; returns each
  epoch's wall time since the loop started training (its metric rows' `wall_time`)."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from rethinking import loop  # pylint: disable=g-import-not-at-top
  from rethinking import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  workdir.mkdir(parents=True)
  loop.prepare_workdir(config, str(workdir))
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
      loop.run(config, str(workdir), task)
  finally:
    logging.set_verbosity(verbosity)
  return [r["wall_time"] for r in metrics_lib.read_rows(os.path.join(workdir, "metrics.jsonl"))]


def bench_epoch(name: str, batch_size: int, num_images: int, data: str,
                tmp: pathlib.Path, budget: Budget, epochs: int = 5) -> dict[str, Any]:
  """Epoch wall time of `loop.run` (logging, host syncs, checkpoints) vs steps x step time.

  Epoch e's time is the wall time between the metric rows of epochs e-1 and e minus
  epoch e's evaluation; the first epoch (compilation) is left out. The reference is
  the same number of steps of the same task (the same compiled step, a second
  state) dispatched back to back and synchronized once: the loop's best case, since
  it dispatches asynchronously too. One reference pass runs after each epoch's
  evaluation (its time taken out with it), so each timed epoch runs between two
  passes: a shared CPU's speed drifts by ~10% over tens of seconds, and an epoch
  against the mean of the passes around it cancels the drift. The overhead is the
  median of those ratios; the fastest epoch against the fastest pass, and against
  the blocked per-step median (which includes each call's dispatch), are recorded too.
  """
  from rethinking import loop  # pylint: disable=g-import-not-at-top

  synthetic = tasks.num_train_images(data) < num_images
  if synthetic:
    data = tasks.synthetic_npz(tmp / f"epoch_{num_images}.npz", num_images, 100)
  config, task = tasks.in_memory_task(
      name, data, batch_size=batch_size, num_train=num_images, num_test=100,
      num_epochs=epochs, eval_train=False, eval_batch_size=100,
      # Today's defaults, explicit: the loop reads both, and they may become "auto".
      steps_per_dispatch=1, half_precision=False)
  holder: dict[str, Any] = {}
  passes = []
  call = timing.carrying(task.train, holder, 0, 1)

  def reference_pass():
    if not holder:
      holder.update(state=task.init_state(), sums=loop.train_sums())
      timing.block(call())
    t = time.perf_counter()
    for _ in range(task.steps_per_epoch):
      sums = call()
    timing.block(sums)
    passes.append(time.perf_counter() - t)

  timed = TimedEvaluation(task, between=reference_pass)
  walls = run_quietly(config, tmp / f"epoch_{name}", timed)
  epoch_s = [walls[e] - walls[e - 1] - timed.eval_seconds[e] for e in range(1, len(walls))]
  step = timing.time_calls(call, max(budget.steps, 10), 2, budget.max_seconds)
  n = task.steps_per_epoch
  expected, epoch = min(passes), min(epoch_s)
  # Timed epoch i (the loop's epoch i + 2) ran between passes i and i + 1.
  paired = [e / ((passes[i] + passes[i + 1]) / 2) - 1 for i, e in enumerate(epoch_s)]
  return {"model": name, "data": "synthetic" if synthetic else data, "num_train": num_images,
          "batch_size": batch_size, "steps_per_epoch": n,
          "steps_per_dispatch": config.steps_per_dispatch,
          "log_every_steps": config.log_every_steps, "epochs_timed": len(epoch_s),
          "epoch_s": epoch, "epoch_s_all": epoch_s,
          "eval_and_reference_s": timed.eval_seconds[1:],
          "step_ms": 1e3 * step.median, "pipelined_step_ms": 1e3 * expected / n,
          "steps_x_step_s": expected, "steps_x_step_s_all": passes,
          "overhead_fraction": float(np.median(paired)), "overhead_paired_all": paired,
          "overhead_fastest": epoch / expected - 1,
          "overhead_vs_blocked_step": epoch / (n * step.median) - 1}


def epoch_images(name: str, rows: list[dict], batch_size: int, seconds: float) -> int:
  """Training images for about `seconds` of steps, between 8 batches and CIFAR-10's
  50,000 (an epoch's fixed costs, evaluation aside, are spread as in a real run)."""
  step_ms = next((r["train"]["step_ms"] for r in rows if r.get("model") == name
                  and "train" in r), 100.0)
  return min(50_000, max(8, math.ceil(1e3 * seconds / step_ms)) * batch_size)


def paper_run(name: str, tmp: pathlib.Path, *, epochs_timed: int = 2, num_train: int = 50_000,
              num_test: int = 10_000, **overrides) -> dict[str, Any]:
  """The wall time of a run of configs/cifar10.py's recipe for `name` (its num_epochs,
  batch size and per-epoch evaluation of the train and test sets), extrapolated from
  1 + `epochs_timed` real epochs of `loop.run` on synthetic images of CIFAR-10's size.

  The estimate is the first epoch (compilation included) plus num_epochs - 1 times the
  mean of the timed epochs (each with its evaluation, logging and checkpoint).
  `overrides` set config fields of the timed run (e.g. a tiny num_train, or
  half_precision); the recipe's num_epochs is what is extrapolated to.
  """
  recipe = tasks.cifar_config(name, **overrides)
  npz = tmp / f"paper_{num_train}_{num_test}.npz"  # One file for every model timed.
  data = str(npz) if npz.exists() else tasks.synthetic_npz(npz, num_train, num_test)
  config, task = tasks.in_memory_task(name, data, **dict(
      overrides, num_train=0, num_test=0, num_epochs=1 + epochs_timed))
  timed = TimedEvaluation(task)
  walls = run_quietly(config, tmp / f"paper_{name}_{time.monotonic_ns()}", timed)
  first, epochs = walls[0], [b - a for a, b in zip(walls, walls[1:])]
  mean = float(np.mean(epochs))
  return {"model": name, "num_epochs": recipe.num_epochs, "num_train": num_train,
          "num_test": num_test, "batch_size": config.batch_size,
          "steps_per_epoch": task.steps_per_epoch, "eval_train": bool(config.eval_train),
          "half_precision": bool(config.half_precision),
          "steps_per_dispatch": config.steps_per_dispatch, "first_epoch_s": first,
          "epoch_s_all": epochs, "eval_s_all": timed.eval_seconds[1:], "epoch_s": mean,
          "estimated_run_s": first + (recipe.num_epochs - 1) * mean}
