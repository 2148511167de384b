"""The epoch loop shared by every task: logging, evaluation, checkpoints, resume, preemption.

A task (CIFAR-10 from device memory, ImageNet from tf.data across devices) says
how to initialize a state, run `n` train steps, and evaluate; this loop owns
everything that must be the same for all of them:

- resume: the newest intact checkpoint; an epoch's metrics row is written only
  once its checkpoint is complete on disk (and travels in it), so a killed run
  that resumes writes each epoch exactly once and metrics.jsonl never runs ahead
  of the checkpoints;
- the host syncs: once per `log_every_steps` and at epoch ends, never per step
  (the running sums are carried through the jitted steps, see `accumulate`);
  and it runs at most one dispatch ahead of the device, so a signal is seen
  within one dispatch;
- checkpoints at every epoch end and every `checkpoint_every_steps`, with the
  running metric sums of a partly finished epoch, so a resumed run continues
  bit for bit; a failed write stops the run (WriteError, exit 1);
- SIGTERM/SIGINT: stop after the dispatch in flight, save, flush, raise Preempted;
- divergence (a step's loss non-finite or above LOSS_LIMIT): stop, set aside any
  checkpoint of a diverged state, name the last healthy checkpoint;
- `stop_at_train_accuracy` (time to fit) and the best test accuracy (early stopping);
- the eval-mode pass over the training set every `eval_train_every_epochs` epochs
  (`evaluates_train_set`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Protocol

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from rethinking import backend_defaults
from rethinking import checkpoint
from rethinking import metrics as metrics_lib
from rethinking import preemption
from rethinking import workdir as workdir_lib

SUM_KEYS = ("loss", "correct", "correct_top5", "count")
# In train sums: the first step whose loss is not finite or above LOSS_LIMIT, or -1.
# (Its state, the one that loss was computed on, is the first diverged one.)
NONFINITE = "first_nonfinite_step"
# A step's mean loss above this has diverged: 100 nats is 43x the loss of a uniform
# guess over 10 classes (ln 10) and 14x over 1,000. Checked on the device at every
# step, so the first diverged state is known exactly and no checkpoint of it or
# after it is kept: the last checkpoint is one a lower learning rate can continue
# from. (With learning_rate=5 the MLP's loss went 2.3 -> 1e4 -> 1e35 -> inf.)
LOSS_LIMIT = 100.0
DIVERGED_DIR = "checkpoints_diverged"
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

  def evaluate(self, state, train_set: bool = True) -> dict[str, Any]:
    """Metrics of the current state: at least test_loss and test_accuracy; with
    `train_set` also the eval-mode pass over the training set (train_eval_*), if the
    task has one. Without it the row holds no train_eval_* keys at all."""


def evaluates_train_set(config: ml_collections.ConfigDict, epoch: int) -> bool:
  """Whether epoch `epoch` (from 1) ends with the eval-mode pass over the training set.

  That pass costs an epoch's forward passes (an estimated 20-30% of a GPU epoch), so
  it runs every `eval_train_every_epochs`-th epoch and at the last. A run with
  `stop_at_train_accuracy` runs it at every epoch: its fit check reads it, and
  nothing cheaper says when it will pass. The running train accuracy averages the
  epoch's earlier states in train mode; the eval-mode accuracy of the state at its
  end leads it by an amount that varies (the quickstart's mlp_1x512: 0.42 against
  0.57 at epoch 3, 0.997 against 1.0 at epoch 14, where it fit), so no margin on
  the running accuracy is sure not to skip the epoch that fits, and a fit reported
  an epoch late moves the time to fit that Figure 1b measures.
  """
  return (config.get("stop_at_train_accuracy", 0) > 0
          or epoch % config.get("eval_train_every_epochs", 1) == 0
          or epoch >= config.num_epochs)


def chunk_size(steps_to_boundary: int, steps_per_dispatch: int) -> int:
  """How many steps the next dispatch runs: `steps_per_dispatch`, or 1 step at a time
  for the last few before a sync point (log, checkpoint, epoch end).

  Each distinct length is a compiled program (with autotuning, on a GPU), so a
  length of `min(steps_to_boundary, k)` would compile up to k of them (~50 with 391
  steps per epoch, a log every 50 steps and k = 50). Two lengths, k and 1, compile
  two; the remainder costs at most k - 1 extra dispatches per sync point, seconds
  over a run against a compile per extra length (an estimate, no accelerator here
  yet: a binary split of the remainder would save those dispatches for up to
  log2(k) more compiles). Any chunking of the same steps trains the same state
  (train.train_steps).
  """
  return steps_per_dispatch if steps_to_boundary >= steps_per_dispatch else 1


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
  """`sums` plus one train step's metric sums; notes `step` if its loss diverged.

  Pure, and called inside the jitted step with `sums` donated: adding on the host
  between dispatches (eager ops waiting on the step's output) stalled the device
  queue, +26-30% on a CIFAR epoch on a 2-core CPU.
  """
  bad = sums[NONFINITE]
  mean = step_sums["loss"] / jnp.maximum(step_sums["count"], 1.0)
  bad = jnp.where((bad < 0) & ~(mean <= LOSS_LIMIT), step, bad)  # NaN fails <= too.
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
  row: dict[str, Any] | None = None  # The metrics row of the epoch this checkpoint ends.


class Diverged(FloatingPointError):
  """Training diverged; the last healthy checkpoint is kept (exit 1)."""


# A tiny computation on each dispatch's output: a buffer the next dispatch does not
# donate, to wait on. (The step's own outputs are donated to the next call.)
_dispatch_done = jax.jit(lambda x: x + 1)


def run(config: ml_collections.ConfigDict, workdir: str, task: Task) -> dict[str, Any]:
  """Trains `task` to config.num_epochs (or to the fit criterion), resuming from `workdir`.

  Returns:
    The last metrics row of the run.

  Raises:
    preemption.Preempted: SIGTERM/SIGINT; what was trained is saved.
    checkpoint.WriteError: a checkpoint or metrics write failed (nothing past the
      last complete checkpoint is recorded).
    Diverged: the loss went non-finite or exploded (nothing diverged is saved).
    checkpoint.ModelMismatch: the checkpoints hold another model.
  """
  with preemption.PreemptionGuard():
    return _Run(config, workdir, task).run()


class _Run:
  """One call of `run`: the loop's state, so that saving and flushing are methods."""

  def __init__(self, config, workdir: str, task: Task):
    self.config, self.workdir, self.task = config, workdir, task
    self.is_main = jax.process_index() == 0
    self.spe = task.steps_per_epoch
    self.pending_row: dict[str, Any] | None = None  # Written once its checkpoint is complete.
    self.last_row: dict[str, Any] = {}

  def run(self) -> dict[str, Any]:
    config, workdir, task = self.config, self.workdir, self.task
    preemption.check("before the run started")
    self.ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    self.writer = None
    self.bar = None
    failed = True
    try:
      self._start()
      result = self._train()
      failed = False
      return result
    finally:
      if self.bar is not None:
        self.bar.close()
      try:
        if failed:
          try:
            self.ckpt.wait()  # A save in flight still completes (it is a good state).
          except checkpoint.WriteError:
            pass  # The error being raised already says what happened.
        self.ckpt.close()  # Raises a WriteError of the last save on the normal path.
        if not failed:
          self._flush()
      finally:
        if self.writer is not None:
          self.writer.close()

  def _start(self) -> None:
    """Restores the newest intact checkpoint and brings the workdir's files in line."""
    config, workdir, task = self.config, self.workdir, self.task
    had_checkpoints = bool(self.ckpt.steps())
    state = task.init_state()
    progress = _Progress()
    restored = self.ckpt.restore_latest_good(state)
    if restored is not None:
      state, meta = restored
      progress = _Progress(**{f.name: meta[f.name] for f in dataclasses.fields(_Progress)
                              if f.name in meta})
      logging.info("Resuming from step %d in %s", int(state.step), workdir)
    self.state, self.progress = state, progress
    self.step = int(state.step)
    if self.is_main:
      workdir_lib.record_config(config, workdir, self.step)
    self.writer = metrics_lib.MetricWriter(workdir, enabled=self.is_main)
    if restored is None and not had_checkpoints and self.writer.last_step():
      # (Damaged checkpoints said so in their own line.)
      logging.warning("Starting from step 0: no checkpoint in %s.", self.ckpt.directory)
    dropped = self.writer.truncate_after(self.step)
    if dropped:
      logging.warning("metrics.jsonl had rows up to step %d but the newest intact checkpoint "
                      "is at step %d: %d row(s) moved to %s; they are trained again.",
                      dropped[-1]["step"], self.step, len(dropped), metrics_lib.DROPPED_FILE)
    # The epoch-end row saved with the checkpoint, if the run stopped before writing it.
    row = progress.row
    if row is not None and row["step"] == self.step and self.writer.last_step() < self.step:
      self.writer.write(row)
    self.last_row = row or {}
    if self.is_main:
      with open(os.path.join(workdir, "run_info.json"), "w") as f:
        json.dump(task.run_info, f, indent=2)
      if not self.last_row:
        self.last_row = (metrics_lib.read_rows(self.writer.path) or [{}])[-1]

  def _save(self, test_accuracy=None) -> None:
    """Starts a checkpoint of the current state (after the previous one completed)."""
    self._flush()
    meta = dict(dataclasses.asdict(self.progress), wall_time=self.wall(),
                epoch=self.step // self.spe)
    self.ckpt.save(self.state, meta, test_accuracy=test_accuracy)

  def _flush(self, block: bool = True) -> None:
    """Collects the save in flight (raises WriteError if it failed), then writes the
    pending row: never before its checkpoint is complete. Without `block`, only if
    the save has already ended (a thread check, cheap enough for every dispatch)."""
    if not block and self.ckpt.busy():
      return
    self.ckpt.wait()
    if self.pending_row is not None:
      self.writer.write(self.pending_row)
      self.pending_row = None

  def _diverged(self, what: str, first_bad: int) -> Diverged:
    """Sets aside checkpoints of states from `first_bad` on and their rows; says
    where the run can continue from."""
    try:
      self.ckpt.wait()
      if self.pending_row is not None and self.pending_row["step"] < first_bad:
        self.writer.write(self.pending_row)  # A healthy epoch: its checkpoint is kept.
    except checkpoint.WriteError:
      pass
    self.pending_row = None
    moved = self.ckpt.set_aside(first_bad, DIVERGED_DIR) if self.is_main else []
    if moved:
      logging.warning("Checkpoint(s) of diverged states moved to %s: steps %s.",
                      DIVERGED_DIR, ", ".join(map(str, moved)))
    self.writer.truncate_after(first_bad - 1)
    steps = self.ckpt.steps()
    lr = self.config.learning_rate
    if not steps:
      advice = (f"No checkpoint was saved before it, so nothing is kept: start again with a "
                f"lower learning rate (e.g. --config.learning_rate={lr / 10:g}); the workdir "
                "takes a new config while it holds nothing trained.")
    else:
      advice = (f"The last healthy checkpoint is step {steps[-1]} in {self.ckpt.directory}: "
                f"continue from it with a lower learning rate, e.g. "
                f"--config.learning_rate={lr / 10:g} --config.allow_config_change=True.")
    return Diverged(f"training diverged: {what}; stopping. {advice}")

  def _check_health(self, sums) -> None:
    """Raises Diverged if a step's loss was non-finite or above LOSS_LIMIT."""
    first_bad = int(sums[NONFINITE])
    if first_bad >= 0:
      raise self._diverged(f"the loss of step {first_bad + 1} is non-finite or above "
                           f"{LOSS_LIMIT:g}", first_bad)

  def wall(self) -> float:
    return self.wall_offset + time.time() - self.start_time

  def _train(self) -> dict[str, Any]:
    config, task, progress, spe = self.config, self.task, self.progress, self.spe
    total = spe * config.num_epochs
    finished = progress.fit_step is not None or self.step >= total
    self.bar = tqdm.tqdm(total=total, initial=min(self.step, total), unit="step",
                         dynamic_ncols=True, disable=not self.is_main or finished)
    self.start_time, self.wall_offset = time.time(), progress.wall_time
    guard = preemption.PreemptionGuard()
    steps_per_dispatch = backend_defaults.steps_per_dispatch(config)
    preemption.check("before the first step")

    for epoch in range(self.step // spe, 0 if finished else config.num_epochs):
      sums = train_sums(progress.train_sums)  # On device; read only at sync points.
      self.bar.set_description(f"epoch {epoch + 1}/{config.num_epochs}")
      epoch_end = (epoch + 1) * spe
      in_flight = None  # The previous dispatch's done-marker.
      while self.step < epoch_end:
        step = self.step
        boundaries = [epoch_end, _next_multiple(step, config.log_every_steps)]
        if config.checkpoint_every_steps:
          boundaries.append(_next_multiple(step, config.checkpoint_every_steps))
        n = chunk_size(min(boundaries) - step, steps_per_dispatch)
        self.state, sums = task.train(self.state, sums, step, n)
        marker = _dispatch_done(sums[NONFINITE])
        if in_flight is not None:
          # At most one dispatch queued behind the one running: a signal is seen
          # when the running one ends, and the next one is the last.
          in_flight.block_until_ready()
        in_flight = marker
        self._flush(block=False)  # A failed write stops the run at the next dispatch.
        self.step = step = step + n
        self.bar.update(n)
        at_checkpoint = bool(config.checkpoint_every_steps
                             and step % config.checkpoint_every_steps == 0)
        at_sync = step % config.log_every_steps == 0 or step == epoch_end or at_checkpoint
        stop = guard.stop_requested(collective=at_sync)
        if at_sync or stop:
          self._check_health(sums)  # The one host sync per log interval.
          self.bar.set_postfix(loss=f"{float(sums['loss']) / max(float(sums['count']), 1):.4f}")
        if step != epoch_end and (at_checkpoint or stop):
          progress.train_sums = {k: float(sums[k]) for k in SUM_KEYS}
          progress.row = None
          self._save()
        if stop and step != epoch_end:
          self._flush()  # Waits for the save: the checkpoint is on disk before exit.
          raise preemption.Preempted(f"{guard.signal_name} at step {step}")

      row = {"epoch": epoch + 1, "step": self.step,
             "learning_rate": float(task.learning_rate_fn(epoch * spe)),
             **means(sums, "train"),
             **task.evaluate(self.state, train_set=evaluates_train_set(config, epoch + 1))}
      row.update(param_norm=float(_global_norm(self.state.params)))
      # The saved state's own numbers (the train losses were of earlier states).
      bad = [k for k in ("train_eval_loss", "test_loss", "param_norm")
             if row.get(k) is not None and not math.isfinite(row[k])]
      if not row.get("train_eval_loss", 0.0) <= LOSS_LIMIT:
        bad.append("train_eval_loss")
      if bad:
        raise self._diverged(f"{bad[0]}={row[bad[0]]} at the end of epoch {epoch + 1} (step "
                             f"{self.step})", self.step)
      if row["test_accuracy"] > progress.best_test_accuracy:
        progress.best_test_accuracy, progress.best_epoch = row["test_accuracy"], epoch + 1
      fit_accuracy = row.get("train_eval_accuracy", row["train_accuracy"])
      stop_loss = config.get("stop_at_train_loss", 0)  # ImageNet's config has none.
      if 0 < config.stop_at_train_accuracy <= fit_accuracy or row["train_loss"] < stop_loss:
        progress.fit_step = self.step
      row.update(best_test_accuracy=progress.best_test_accuracy,
                 best_epoch=progress.best_epoch, wall_time=self.wall())
      if progress.fit_step is not None:
        row["fit_step"] = progress.fit_step
      progress.train_sums = None
      progress.row = row
      self._save(test_accuracy=row["test_accuracy"])
      self.pending_row = row  # Written once the checkpoint is complete.
      self.last_row = row
      self.bar.write(_summary(row))
      if progress.fit_step is not None:
        logging.info("Train accuracy %.4f, running loss %.4g at step %d: stop criterion "
                     "met (accuracy >= %g or loss < %g).", fit_accuracy, row["train_loss"],
                     self.step, config.stop_at_train_accuracy, stop_loss)
        break
      if guard.stop_requested() and self.step < total:
        self._flush()  # Waits for the save: the checkpoint is on disk before exit.
        raise preemption.Preempted(f"{guard.signal_name} at step {self.step}")
    return self.last_row


def _next_multiple(step: int, every: int) -> int:
  return (step // every + 1) * every


def _summary(row: dict[str, Any]) -> str:
  keys = ("train_loss", "train_accuracy", "train_eval_accuracy", "test_accuracy")
  return f"epoch {row['epoch']} step {row['step']}: " + " ".join(
      f"{k}={row[k]:.4f}" for k in keys if row.get(k) is not None)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a resume that would change the run's trajectory (see
  workdir.check_resumable); config.json is written, or a resume's changes
  recorded, by `run` once the checkpoint to continue from is known."""
  workdir_lib.check_resumable(config, workdir)
