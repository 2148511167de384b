"""Training and evaluation of one CIFAR-10-style run: `train_and_evaluate(config, workdir)`.

The loop is host-light: the dataset lives on the device, a jitted `train_steps`
runs `steps` SGD steps per call (a `fori_loop` over the pure `step.train_step`,
gathering and augmenting each batch on the device) and accumulates metric sums
there; the host fetches them once per `log_every_steps` and at epoch ends.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from rethinking import checkpoint
from rethinking import metrics as metrics_lib
from rethinking import optim
from rethinking import step as step_lib
from rethinking import validation
from rethinking.data import arrays
from rethinking.data import corruptions
from rethinking.data import in_memory
from rethinking.data import preprocess
from rethinking.models import get_model

# Separate RNG streams, each a pure function of (seed, tag) and then of step or epoch.
_INIT, _DATA, _AUGMENT, _DROPOUT = range(4)
SUM_KEYS = ("loss", "correct", "correct_top5", "count")


def load_data(config: ml_collections.ConfigDict) -> corruptions.Corrupted:
  """Loads the dataset, takes the seeded balanced subsets and applies the corruption."""
  ds = arrays.load_arrays(config.dataset, config.data_dir or None)
  if config.num_train:
    idx = arrays.balanced_subset(ds.y_train, config.num_train, config.seed)
    ds = dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])
  if config.num_test:
    try:
      idx = arrays.balanced_subset(ds.y_test, config.num_test, config.seed)
    except ValueError as e:
      raise ValueError(str(e).replace("config.num_train", "config.num_test")) from None
    ds = dataclasses.replace(ds, x_test=ds.x_test[idx], y_test=ds.y_test[idx])
  validation.check_data(config, ds)
  return corruptions.apply(ds, config.corruption, config.corrupt_prob, config.seed,
                           force_different=config.corrupt_force_different)


def _add(a: dict, b: dict) -> dict:
  return jax.tree_util.tree_map(jnp.add, a, b)


def _zeros() -> dict[str, jax.Array]:
  return {k: jnp.zeros((), jnp.float32) for k in SUM_KEYS}


def train_steps(state: step_lib.TrainState, num_steps: jax.Array, x: jax.Array, y: jax.Array,
                perm: jax.Array, keys: dict[str, jax.Array], *, batch_size: int,
                steps_per_epoch: int, image_size: int, augment: str, rotation_degrees: float,
                dtype: Any) -> tuple[step_lib.TrainState, dict[str, jax.Array]]:
  """Runs `num_steps` train steps of the current epoch and returns their metric sums.

  `num_steps` is traced, so one compilation serves every chunk length (fused
  multi-step dispatch, the last chunk of an epoch, single steps alike).
  Each step's batch and augmentation depend only on (keys, state.step), so any
  chunking of the same steps gives the same result.
  """

  def body(_, carry):
    state, sums, first_bad = carry
    idx = in_memory.batch_indices(perm, state.step % steps_per_epoch, batch_size)
    images = preprocess.preprocess(
        x[idx], image_size=image_size, augment=augment,
        rng=jax.random.fold_in(keys["augment"], state.step),
        rotation_degrees=rotation_degrees, dtype=dtype)
    step = state.step
    state, m = step_lib.train_step(state, {"image": images, "label": y[idx]}, keys["dropout"])
    first_bad = jnp.where((first_bad < 0) & ~jnp.isfinite(m["loss"]), step, first_bad)
    return state, _add(sums, m), first_bad

  state, sums, first_bad = jax.lax.fori_loop(
      0, num_steps, body, (state, _zeros(), jnp.asarray(-1, jnp.int32)))
  return state, dict(sums, first_nonfinite_step=first_bad)


def evaluate(state: step_lib.TrainState, x: jax.Array, y: jax.Array, masks: jax.Array, *,
             batch_size: int, image_size: int, dtype: Any) -> dict[str, jax.Array]:
  """Metric sums over every example once, for each row of `masks` [G, N] (example groups)."""
  idx, valid = in_memory.eval_batch_indices(x.shape[0], batch_size)

  def body(sums, batch):
    b_idx, b_valid = batch
    images = preprocess.preprocess(x[b_idx], image_size=image_size, dtype=dtype)
    m = step_lib.eval_step(state, {"image": images, "label": y[b_idx],
                                   "mask": masks[:, b_idx] * b_valid})
    return _add(sums, m), None

  zeros = {k: jnp.zeros((masks.shape[0],), jnp.float32) for k in SUM_KEYS}
  return jax.lax.scan(body, zeros, (idx, valid))[0]


def _means(sums: dict[str, Any], prefix: str, index: int | None = None) -> dict[str, float]:
  """loss and accuracy from metric sums (optionally one group of a grouped eval)."""
  s = {k: float(v if index is None else v[index]) for k, v in sums.items() if k in SUM_KEYS}
  if not s["count"]:  # An empty group (no clean labels at p = 1): no number, not a zero.
    return {f"{prefix}_loss": None, f"{prefix}_accuracy": None}
  return {f"{prefix}_loss": s["loss"] / s["count"], f"{prefix}_accuracy": s["correct"] / s["count"]}


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates a model; resumes from the workdir's latest checkpoint.

  Args:
    config: a configs/cifar10.py config.
    workdir: where config.json, metrics.jsonl, TensorBoard events and checkpoints go.

  Returns:
    The last metrics row.
  """
  validation.check_config(config)
  data = load_data(config)  # Validated before the workdir is touched.
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    _write_config(config, workdir)

  num_train, image_channels = data.x_train.shape[0], data.x_train.shape[-1]
  num_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
  spe = in_memory.steps_per_epoch(num_train, config.batch_size)
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  model = get_model(config.model, num_classes=num_classes, dropout_rate=config.dropout_rate,
                    dtype=dtype)
  lr_fn = optim.learning_rate_schedule(config.learning_rate, config.lr_decay, spe)
  tx = optim.make_optimizer(lr_fn, config.momentum, config.weight_decay)
  root = jax.random.PRNGKey(config.seed)
  keys = {name: jax.random.fold_in(root, tag) for name, tag in
          (("data", _DATA), ("augment", _AUGMENT), ("dropout", _DROPOUT))}
  state = step_lib.create_train_state(jax.random.fold_in(root, _INIT), model,
                                      (config.image_size, config.image_size, image_channels), tx)
  num_params = sum(p.size for p in jax.tree_util.tree_leaves(state.params))

  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  meta = {"best_test_accuracy": 0.0, "best_epoch": 0, "wall_time": 0.0, "train_sums": None}
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    logging.info("Resumed from step %d in %s", int(state.step), workdir)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  writer.truncate_after(int(state.step))

  run_info = {"num_train": num_train, "num_test": int(data.x_test.shape[0]),
              "num_params": int(num_params), "steps_per_epoch": spe,
              "data_fingerprint": data.fingerprint,
              # Selected for corruption, and actually changed (a random class can be the true one).
              "label_selected_fraction": float(np.mean(data.corrupted_mask)),
              "label_noise": float(np.mean(data.changed_mask)),
              "test_images_corrupted": data.corrupt_test_images}
  logging.info("Run: %s", json.dumps(run_info))
  if is_main:
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
      json.dump(run_info, f, indent=2)

  # Everything the steps read lives on the device for the whole run.
  x_train, y_train = jax.device_put(data.x_train), jax.device_put(data.y_train)
  x_test, y_test = jax.device_put(data.x_test), jax.device_put(data.y_test)
  corrupted = data.changed_mask.astype(np.float32)  # Groups: all, clean, wrong labels.
  train_groups = jax.device_put(np.stack([np.ones_like(corrupted), 1 - corrupted, corrupted]))
  test_groups = jnp.ones((1, x_test.shape[0]), jnp.float32)

  run_steps = jax.jit(functools.partial(
      train_steps, batch_size=config.batch_size, steps_per_epoch=spe,
      image_size=config.image_size, augment=config.augment,
      rotation_degrees=config.rotation_degrees, dtype=dtype), donate_argnums=0)
  run_eval = jax.jit(functools.partial(evaluate, batch_size=config.eval_batch_size,
                                       image_size=config.image_size, dtype=dtype))
  permutation = jax.jit(in_memory.epoch_permutation, static_argnums=2)

  step = int(state.step)
  total_steps = spe * config.num_epochs
  start_time, wall_offset = time.time(), meta["wall_time"]
  bar = tqdm.tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                  disable=not is_main)
  row: dict[str, Any] = {}
  try:
    for epoch in range(step // spe, config.num_epochs):
      perm = permutation(keys["data"], epoch, num_train)
      sums = {k: jnp.asarray(v, jnp.float32) for k, v in (meta["train_sums"] or {}).items()}
      sums = sums or _zeros()
      bar.set_description(f"epoch {epoch + 1}/{config.num_epochs}")
      epoch_end = (epoch + 1) * spe
      while step < epoch_end:
        boundaries = [epoch_end, (step // config.log_every_steps + 1) * config.log_every_steps]
        if config.checkpoint_every_steps:
          every = config.checkpoint_every_steps
          boundaries.append((step // every + 1) * every)
        n = min(min(boundaries) - step, config.steps_per_dispatch)
        state, chunk = run_steps(state, jnp.asarray(n, jnp.int32), x_train, y_train, perm, keys)
        bad = chunk.pop("first_nonfinite_step")
        sums = _add(sums, chunk)
        step += n
        bar.update(n)
        if step % config.log_every_steps == 0 or step == epoch_end:
          _check_finite(int(bad), workdir)  # The one host sync per log interval.
          bar.set_postfix(loss=f"{float(sums['loss']) / max(float(sums['count']), 1):.4f}")
        if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
            and step != epoch_end):
          _check_finite(int(bad), workdir)
          ckpt.save(state, dict(meta, train_sums={k: float(v) for k, v in sums.items()},
                                wall_time=wall_offset + time.time() - start_time))

      row = {"epoch": epoch + 1, "step": step,
             "learning_rate": float(lr_fn(epoch * spe)),
             **_means(sums, "train")}
      if config.eval_train:
        train_eval = run_eval(state, x_train, y_train, train_groups)
        row.update(_means(train_eval, "train_eval", 0))
        if config.corruption == "partial_labels" or config.corruption == "random_labels":
          row["train_accuracy_clean"] = _means(train_eval, "t", 1)["t_accuracy"]
          row["train_accuracy_corrupted"] = _means(train_eval, "t", 2)["t_accuracy"]
      test = run_eval(state, x_test, y_test, test_groups)
      row.update(_means(test, "test", 0))
      row["test_top5_accuracy"] = float(test["correct_top5"][0] / test["count"][0])
      if row["test_accuracy"] > meta["best_test_accuracy"]:
        meta.update(best_test_accuracy=row["test_accuracy"], best_epoch=epoch + 1)
      fit_accuracy = row.get("train_eval_accuracy", row["train_accuracy"])
      fitted = 0 < config.stop_at_train_accuracy <= fit_accuracy
      wall_time = wall_offset + time.time() - start_time
      row.update(best_test_accuracy=meta["best_test_accuracy"], best_epoch=meta["best_epoch"],
                 param_norm=float(optax.global_norm(state.params)), wall_time=wall_time,
                 corruption=config.corruption, test_images_corrupted=data.corrupt_test_images,
                 data_fingerprint=data.fingerprint)
      if fitted:
        row["fit_step"] = step
      writer.write(row)
      meta.update(train_sums=None, wall_time=wall_time, epoch=epoch + 1)
      ckpt.save(state, meta, test_accuracy=row["test_accuracy"])
      bar.write(_summary(row))
      if fitted:
        logging.info("Train accuracy %.4f >= %.4f at step %d: stopping.", fit_accuracy,
                     config.stop_at_train_accuracy, step)
        break
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  return row


def _check_finite(first_bad_step: int, workdir: str) -> None:
  if first_bad_step >= 0:
    raise FloatingPointError(
        f"non-finite training loss at step {first_bad_step + 1}; stopping. The last good "
        f"checkpoint in {workdir} is kept (lower config.learning_rate to continue).")


def _summary(row: dict[str, Any]) -> str:
  keys = ("train_loss", "train_accuracy", "train_eval_accuracy", "test_accuracy")
  return f"epoch {row['epoch']} step {row['step']}: " + " ".join(
      f"{k}={row[k]:.4f}" for k in keys if k in row)
