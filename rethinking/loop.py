"""The epoch loop shared by every task: logging, evaluation, checkpoints, resume, preemption.

A task (CIFAR-10 from device memory, ImageNet from tf.data across devices) says
how to initialize a state, run `n` train steps, and evaluate; this loop owns
everything that must be the same for all of them:

- resume: the newest intact checkpoint; metrics rows past it are dropped, so a
  killed run that resumes writes each epoch exactly once;
- the host syncs: once per `log_every_steps` and at epoch ends, never per step
  (the running sums are carried through the jitted steps, see `accumulate`);
- checkpoints at every epoch end and every `checkpoint_every_steps`, with the
  running metric sums of a partly finished epoch, so a resumed run continues
  bit for bit;
- SIGTERM/SIGINT: stop after the current dispatch, save, flush, raise Preempted;
- a non-finite loss: stop without saving, naming the step;
- `stop_at_train_accuracy` (time to fit) and the best test accuracy (early stopping).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Protocol

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from rethinking import checkpoint
from rethinking import metrics as metrics_lib
from rethinking import preemption
from rethinking import workdir as workdir_lib

SUM_KEYS = ("loss", "correct", "correct_top5", "count")
NONFINITE = "first_nonfinite_step"  # In train sums: the first step with a NaN/inf loss, or -1.
# One compiled call, not an eager op per parameter array (~20 ms per epoch on a CPU).
_global_norm = jax.jit(optax.global_norm)


class Task(Protocol):
  """What the loop needs from a dataset/model/device setup."""

  steps_per_epoch: int
  learning_rate_fn: Callable[[int], Any]
  run_info: dict[str, Any]  # Written to run_info.json; sizes, fingerprints, ...

  def init_state(self) -> Any:
    """A fresh train state (the template a checkpoint is restored onto)."""

  def train(self, state, sums: dict[str, jax.Array], step: int,
            num_steps: int) -> tuple[Any, dict[str, jax.Array]]:
    """Runs `num_steps` steps from `step` (= state.step, known on the host, so the
    task never reads it back); returns the state and `sums` advanced by
    `accumulate` on the device. Both inputs may be donated."""

  def evaluate(self, state) -> dict[str, Any]:
    """Metrics of the current state: at least test_loss and test_accuracy."""


def zero_sums(shape: tuple[int, ...] = ()) -> dict[str, jax.Array]:
  """Zero metric sums (of `shape`: one per example group for a grouped evaluation)."""
  return {k: jnp.zeros(shape, jnp.float32) for k in SUM_KEYS}


def add_sums(a: dict, b: dict) -> dict:
  return jax.tree_util.tree_map(jnp.add, a, b)


def train_sums(saved: dict[str, float] | None = None) -> dict[str, jax.Array]:
  """Where an epoch's running train sums start: zeros, or a partial epoch's saved
  sums; plus NONFINITE = -1 (no non-finite loss seen)."""
  sums = {k: jnp.asarray((saved or {}).get(k, 0.0), jnp.float32) for k in SUM_KEYS}
  return dict(sums, **{NONFINITE: jnp.asarray(-1, jnp.int32)})


def accumulate(sums: dict[str, jax.Array], step_sums: dict[str, jax.Array],
               step: jax.Array) -> dict[str, jax.Array]:
  """`sums` plus one train step's metric sums; notes `step` if its loss is not finite.

  Pure, and called inside the jitted step with `sums` donated: adding on the host
  between dispatches (eager ops waiting on the step's output) stalled the device
  queue, +26-30% on a CIFAR epoch on a 2-core CPU.
  """
  bad = sums[NONFINITE]
  bad = jnp.where((bad < 0) & ~jnp.isfinite(step_sums["loss"]), step, bad)
  return dict({k: sums[k] + step_sums[k] for k in SUM_KEYS},
              **{NONFINITE: bad.astype(jnp.int32)})


def means(sums: dict[str, Any], prefix: str, index: int | None = None) -> dict[str, Any]:
  """Loss, top-1 and top-5 accuracy from metric sums (optionally one group of a grouped eval).

  An empty group (no clean labels at p = 1) gives None, not a misleading zero.
  """
  s = {k: float(v if index is None else v[index]) for k, v in sums.items() if k in SUM_KEYS}
  names = {"loss": "loss", "correct": "accuracy", "correct_top5": "top5_accuracy"}
  return {f"{prefix}_{name}": s[key] / s["count"] if s["count"] else None
          for key, name in names.items()}


@dataclasses.dataclass
class _Progress:
  """Resume bookkeeping saved in each checkpoint's `meta`."""

  best_test_accuracy: float = 0.0
  best_epoch: int = 0
  wall_time: float = 0.0
  fit_step: int | None = None
  train_sums: dict[str, float] | None = None  # Sums of a partly finished epoch.


def run(config: ml_collections.ConfigDict, workdir: str, task: Task) -> dict[str, Any]:
  """Trains `task` to config.num_epochs (or to the fit criterion), resuming from `workdir`.

  Returns:
    The last metrics row of the run.
  """
  is_main = jax.process_index() == 0
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  state = task.init_state()
  progress = _Progress()
  restored = ckpt.restore_latest_good(state)
  if restored is not None:
    state, meta = restored
    progress = _Progress(**{f.name: meta[f.name] for f in dataclasses.fields(_Progress)
                            if f.name in meta})
    logging.info("Resuming from step %d in %s", int(state.step), workdir)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  writer.truncate_after(int(state.step))
  if is_main:
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
      json.dump(task.run_info, f, indent=2)

  spe = task.steps_per_epoch
  step = int(state.step)
  finished = progress.fit_step is not None or step >= spe * config.num_epochs
  bar = tqdm.tqdm(total=spe * config.num_epochs, initial=min(step, spe * config.num_epochs),
                  unit="step", dynamic_ncols=True, disable=not is_main or finished)
  start_time, wall_offset = time.time(), progress.wall_time
  wall = lambda: wall_offset + time.time() - start_time
  last_row = (metrics_lib.read_rows(writer.path) or [{}])[-1] if is_main else {}

  def save(test_accuracy=None):
    ckpt.save(state, dict(dataclasses.asdict(progress), wall_time=wall(), epoch=step // spe),
              test_accuracy=test_accuracy)

  try:
    with preemption.PreemptionGuard() as guard:
      for epoch in range(step // spe, 0 if finished else config.num_epochs):
        sums = train_sums(progress.train_sums)  # On device; read only at sync points.
        bar.set_description(f"epoch {epoch + 1}/{config.num_epochs}")
        epoch_end = (epoch + 1) * spe
        while step < epoch_end:
          boundaries = [epoch_end, _next_multiple(step, config.log_every_steps)]
          if config.checkpoint_every_steps:
            boundaries.append(_next_multiple(step, config.checkpoint_every_steps))
          n = min(min(boundaries) - step, config.steps_per_dispatch)
          state, sums = task.train(state, sums, step, n)
          step += n
          bar.update(n)
          at_checkpoint = bool(config.checkpoint_every_steps
                               and step % config.checkpoint_every_steps == 0)
          at_sync = step % config.log_every_steps == 0 or step == epoch_end or at_checkpoint
          stop = guard.stop_requested(collective=at_sync)
          if at_sync or stop:
            _check_finite(int(sums[NONFINITE]), workdir)  # The one host sync per log interval.
            bar.set_postfix(loss=f"{float(sums['loss']) / max(float(sums['count']), 1):.4f}")
          if step != epoch_end and (at_checkpoint or stop):
            progress.train_sums = {k: float(sums[k]) for k in SUM_KEYS}
            save()
          if stop and step != epoch_end:
            raise preemption.Preempted(f"{guard.signal_name} at step {step}")

        row = {"epoch": epoch + 1, "step": step,
               "learning_rate": float(task.learning_rate_fn(epoch * spe)),
               **means(sums, "train"), **task.evaluate(state)}
        if row["test_accuracy"] > progress.best_test_accuracy:
          progress.best_test_accuracy, progress.best_epoch = row["test_accuracy"], epoch + 1
        fit_accuracy = row.get("train_eval_accuracy", row["train_accuracy"])
        if 0 < config.stop_at_train_accuracy <= fit_accuracy:
          progress.fit_step = step
        row.update(best_test_accuracy=progress.best_test_accuracy,
                   best_epoch=progress.best_epoch,
                   param_norm=float(_global_norm(state.params)), wall_time=wall())
        if progress.fit_step is not None:
          row["fit_step"] = progress.fit_step
        writer.write(row)
        last_row = row
        progress.train_sums = None
        save(test_accuracy=row["test_accuracy"])
        bar.write(_summary(row))
        if progress.fit_step is not None:
          logging.info("Train accuracy %.4f >= %.4f at step %d: stopping.", fit_accuracy,
                       config.stop_at_train_accuracy, step)
          break
        if guard.stop_requested():
          raise preemption.Preempted(f"{guard.signal_name} at step {step}")
  finally:
    bar.close()
    ckpt.close()  # Waits for the asynchronous save in flight.
    writer.close()
  return last_row


def _next_multiple(step: int, every: int) -> int:
  return (step // every + 1) * every


def _check_finite(first_bad_step: int, workdir: str) -> None:
  if first_bad_step >= 0:
    raise FloatingPointError(
        f"non-finite training loss at step {first_bad_step + 1}; stopping. The last good "
        f"checkpoint in {workdir} is kept (lower config.learning_rate to continue).")


def _summary(row: dict[str, Any]) -> str:
  keys = ("train_loss", "train_accuracy", "train_eval_accuracy", "test_accuracy")
  return f"epoch {row['epoch']} step {row['step']}: " + " ".join(
      f"{k}={row[k]:.4f}" for k in keys if row.get(k) is not None)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir of a different run, then writes config.json (process 0)."""
  workdir_lib.check_resumable(config, workdir)
  if jax.process_index() == 0:
    workdir_lib.write_config(config, workdir)
