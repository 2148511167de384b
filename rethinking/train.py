"""One run: `train_and_evaluate(config, workdir)`, and the in-memory (CIFAR-10) task.

The in-memory task is host-light: the dataset lives on the device (preprocessed
there once where no augmentation needs the raw images), a jitted `train_steps`
runs `n` SGD steps per call (the pure `step.train_step`, gathering and augmenting
each batch on the device; several steps fused by `lax.scan`) and adds to metric
sums on the device; `rethinking.loop` fetches them once per `log_every_steps` and
at epoch ends.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rethinking import backend_defaults
from rethinking import loop
from rethinking import optim
from rethinking import preemption
from rethinking import step as step_lib
from rethinking import validation
from rethinking import workdir as workdir_lib
from rethinking.data import arrays
from rethinking.data import corruptions
from rethinking.data import in_memory
from rethinking.data import preprocess
from rethinking.models import get_model

# Separate RNG streams, each a pure function of (seed, tag) and then of step or epoch.
_INIT, _DATA, _AUGMENT, _DROPOUT = range(4)


def data_seed(config: ml_collections.ConfigDict) -> int:
  """The seed of the data (subsets, corruption): `config.data_seed`, or `seed` when -1.

  Separate from `seed` (initialization, order, dropout, augmentation), so that one
  set of random labels can be trained from several initializations.
  """
  return config.seed if config.get("data_seed", -1) < 0 else config.data_seed


def load_data(config: ml_collections.ConfigDict) -> corruptions.Corrupted:
  """Loads the dataset, takes the seeded balanced subsets, downscales the images if
  asked (`config.resize`) and applies the corruption."""
  ds = arrays.load_arrays(config.dataset, config.data_dir or None)
  for field, split in (("num_train", "train"), ("num_test", "test")):
    labels = getattr(ds, f"y_{split}")
    if config[field] > labels.shape[0]:
      raise ValueError(f"config.{field}={config[field]} is not allowed: expected 1.."
                       f"{labels.shape[0]} (the {split} set's size of {config.dataset!r}), "
                       "or 0 for all")
  if config.num_train:
    idx = arrays.balanced_subset(ds.y_train, config.num_train, data_seed(config))
    ds = dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])
  if config.num_test:
    try:
      idx = arrays.balanced_subset(ds.y_test, config.num_test, data_seed(config))
    except ValueError as e:
      raise ValueError(str(e).replace("config.num_train", "config.num_test")
                       .replace("the training set", "the test set")) from None
    ds = dataclasses.replace(ds, x_test=ds.x_test[idx], y_test=ds.y_test[idx])
  if config.get("resize", 0):
    ds = arrays.downscale(ds, config.resize)
  validation.check_data(config, ds)
  return corruptions.apply(ds, config.corruption, config.corrupt_prob, data_seed(config),
                           force_different=config.corrupt_force_different)


def prepare_inputs(images: jax.Array, *, image_size: int, dtype: Any,
                   chunk: int = 8192) -> jax.Array:
  """The evaluation preprocessing (center crop, per-image standardization) of a whole
  in-memory image array, done once.

  Gathering a batch of prepared inputs is the whole per-step input pipeline then:
  0.14-0.17 ms against 0.38 ms for preprocessing a CIFAR batch of 128 each step on
  a 2-core CPU, for 4 bytes per value in device memory (470 MB for CIFAR-10's train
  set; bfloat16 halves it). In chunks, to bound the temporaries.
  """
  fn = jax.jit(functools.partial(preprocess.preprocess, image_size=image_size, dtype=dtype))
  return jnp.concatenate([fn(images[i:i + chunk]) for i in range(0, images.shape[0], chunk)])


def train_batch(x: jax.Array, y: jax.Array, perm: jax.Array, step: jax.Array,
                augment_key: jax.Array, *, batch_size: int, steps_per_epoch: int,
                image_size: int, augment: str, rotation_degrees: float,
                dtype: Any) -> dict[str, jax.Array]:
  """The batch of global step `step`, gathered (and augmented) on the device.

  With augment='none' `x` holds `prepare_inputs` of the images, so the batch is a
  gather; otherwise it holds the raw uint8 images, cropped, flipped (and rotated)
  with a key of `step`, then standardized.
  """
  idx = in_memory.batch_indices(perm, step % steps_per_epoch, batch_size)
  if augment == "none":
    return {"image": x[idx], "label": y[idx]}
  images = preprocess.preprocess(
      x[idx], image_size=image_size, augment=augment,
      rng=jax.random.fold_in(augment_key, step), rotation_degrees=rotation_degrees,
      dtype=dtype)
  return {"image": images, "label": y[idx]}


def train_steps(state: step_lib.TrainState, sums: dict[str, jax.Array], num_steps: int,
                x: jax.Array, y: jax.Array, perm: jax.Array, keys: dict[str, jax.Array],
                **batch_kwargs) -> tuple[step_lib.TrainState, dict[str, jax.Array]]:
  """Runs `num_steps` (static) train steps of the current epoch, adding to `sums`.

  One step is the plain step, with no loop around it. Several are fused with
  `lax.scan` into one device call, which pays where dispatch overhead matters
  (small models on fast accelerators). Not on XLA's CPU backend: there a
  convolution's gradient inside any loop runs ~20x slower than outside it
  (alexnet_small, batch 128: 0.55 s/step plain, 11 s/step in a fori_loop or scan),
  hence steps_per_dispatch = 1 on a CPU by default (backend_defaults).
  Each step's batch and augmentation depend only on (keys, state.step), so any
  chunking of the same steps trains the same state: bit for bit for the MLPs on a
  CPU; a fused conv net's program rounds differently (alexnet_small: ~5e-6 in the
  parameters after 4 steps).
  """

  def one_step(carry, _=None):
    state, sums = carry
    batch = train_batch(x, y, perm, state.step, keys["augment"], **batch_kwargs)
    new_state, m = step_lib.train_step(state, batch, keys["dropout"])
    return (new_state, loop.accumulate(sums, m, state.step)), None

  if num_steps == 1:
    return one_step((state, sums))[0]
  return jax.lax.scan(one_step, (state, sums), None, length=num_steps)[0]


def eval_batch(state: step_lib.TrainState, sums: dict[str, jax.Array], x: jax.Array,
               y: jax.Array, masks: jax.Array, idx: jax.Array,
               valid: jax.Array) -> dict[str, jax.Array]:
  """`sums` plus the metric sums of one evaluation batch of prepared inputs `x`, per
  row of `masks` [G, N] (example groups); accumulated here, not on the host, for
  `loop.accumulate`'s reason."""
  return loop.add_sums(sums, step_lib.eval_step(
      state, {"image": x[idx], "label": y[idx], "mask": masks[:, idx] * valid}))


class InMemoryTask:
  """A dataset held in device memory (CIFAR-10, MNIST) on one device."""

  def __init__(self, config: ml_collections.ConfigDict, data: corruptions.Corrupted):
    self.config, self.data = config, data
    num_train, channels = data.x_train.shape[0], data.x_train.shape[-1]
    num_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    self.steps_per_epoch = in_memory.steps_per_epoch(num_train, config.batch_size)
    dtype = jnp.bfloat16 if backend_defaults.half_precision(config) else jnp.float32
    self.model = get_model(config.model, num_classes=num_classes,
                           dropout_rate=config.dropout_rate, dtype=dtype,
                           bn_momentum=config.get("bn_momentum", 0.99))
    self.learning_rate_fn = optim.learning_rate_schedule(
        config.learning_rate, config.lr_decay, self.steps_per_epoch)
    self.tx = optim.make_optimizer(self.learning_rate_fn, config.momentum, config.weight_decay)
    self.root = jax.random.PRNGKey(config.seed)
    self.keys = {name: jax.random.fold_in(self.root, tag) for name, tag in
                 (("data", _DATA), ("augment", _AUGMENT), ("dropout", _DROPOUT))}
    self.input_shape = (config.image_size, config.image_size, channels)

    # Everything the steps read lives on the device for the whole run: uint8 images
    # go over (4x less than float32), and the deterministic preprocessing is done
    # there once. The train step reads raw images only to augment them.
    prepare = functools.partial(prepare_inputs, image_size=config.image_size, dtype=dtype)
    x_train, self.y_train = jax.device_put(data.x_train), jax.device_put(data.y_train)
    self.num_train = num_train
    self.x_test, self.y_test = prepare(jax.device_put(data.x_test)), jax.device_put(data.y_test)
    self.x_train = prepare(x_train) if config.augment == "none" or config.eval_train else None
    # What the train step gathers from: prepared inputs, or raw images to augment.
    self.train_inputs = self.x_train if config.augment == "none" else x_train
    wrong = data.changed_mask.astype(np.float32)  # Groups: all, true labels, changed labels.
    self.train_groups = jax.device_put(np.stack([np.ones_like(wrong), 1 - wrong, wrong]))
    self.test_groups = jnp.ones((1, data.x_test.shape[0]), jnp.float32)

    self.batch_kwargs = dict(
        batch_size=config.batch_size, steps_per_epoch=self.steps_per_epoch,
        image_size=config.image_size, augment=config.augment,
        rotation_degrees=config.rotation_degrees, dtype=dtype)
    self._train_steps = jax.jit(functools.partial(train_steps, **self.batch_kwargs),
                                static_argnums=2, donate_argnums=(0, 1))
    self._eval_batch = jax.jit(eval_batch, donate_argnums=1)
    self._permutation = jax.jit(in_memory.epoch_permutation, static_argnums=2)
    self._perm_epoch, self._perm = None, None
    self._eval_indices: dict[int, list[tuple[jax.Array, jax.Array]]] = {}
    self.run_info = {
        "num_train": num_train, "num_test": int(data.x_test.shape[0]),
        "steps_per_epoch": self.steps_per_epoch, "num_classes": num_classes,
        "data_fingerprint": data.fingerprint,
        # Selected for corruption, and actually changed (a random class can be the true one).
        "label_selected_fraction": float(np.mean(data.corrupted_mask)),
        "label_noise": float(np.mean(data.changed_mask)),
        "test_images_corrupted": data.corrupt_test_images}

  def init_state(self) -> step_lib.TrainState:
    state = step_lib.create_train_state(jax.random.fold_in(self.root, _INIT), self.model,
                                        self.input_shape, self.tx)
    self.run_info["num_params"] = int(sum(p.size for p in jax.tree_util.tree_leaves(state.params)))
    return state

  def train(self, state, sums, step: int, num_steps: int):
    epoch = step // self.steps_per_epoch
    if self._perm_epoch != epoch:  # One permutation per epoch, computed on the device.
      self._perm_epoch, self._perm = epoch, self._permutation(
          self.keys["data"], epoch, self.num_train)
    return self._train_steps(state, sums, num_steps, self.train_inputs, self.y_train,
                             self._perm, self.keys)

  def _evaluate(self, state, x, y, masks) -> dict[str, jax.Array]:
    """Sums over every example once. A host loop of jitted batches (dispatched
    asynchronously, read once at the end): XLA's CPU backend runs convolutions
    inside a device-side loop ~20x slower."""
    n = x.shape[0]
    if n not in self._eval_indices:  # Sliced once: no eager ops between the batches.
      self._eval_indices[n] = list(zip(*in_memory.eval_batch_indices(
          n, self.config.eval_batch_size)))
    sums = loop.zero_sums(masks.shape[:1])
    for b_idx, b_valid in self._eval_indices[n]:
      sums = self._eval_batch(state, sums, x, y, masks, b_idx, b_valid)
    return sums

  def evaluate(self, state, train_set: bool = True) -> dict[str, Any]:
    row = {}
    if self.config.eval_train and train_set:
      sums = self._evaluate(state, self.x_train, self.y_train, self.train_groups)
      row.update(loop.means(sums, "train_eval", 0))
      row.pop("train_eval_top5_accuracy")
      if self.config.corruption in corruptions.LABEL_CORRUPTIONS:
        row["train_accuracy_clean"] = loop.means(sums, "t", 1)["t_accuracy"]
        row["train_accuracy_corrupted"] = loop.means(sums, "t", 2)["t_accuracy"]
    sums = self._evaluate(state, self.x_test, self.y_test, self.test_groups)
    row.update(loop.means(sums, "test", 0))
    row.update(corruption=self.config.corruption,
               test_images_corrupted=self.data.corrupt_test_images,
               data_fingerprint=self.data.fingerprint)
    return row


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates a model; resumes from the workdir's latest good checkpoint.

  Args:
    config: a configs/cifar10.py config.
    workdir: where config.json, metrics.jsonl, TensorBoard events and checkpoints go.

  Returns:
    The last metrics row.
  """
  # SIGTERM/SIGINT from here on is a clean stop (exit 75) wherever it lands; the
  # command line installs the same handler process-wide before its imports.
  with preemption.PreemptionGuard():
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  validation.check_config(config)
  # Everything is validated (config, data, workdir) before the workdir is touched.
  if config.get("pipeline", "in_memory") == "imagenet":
    make_task = _data_parallel_task(config)
  else:
    data = load_data(config)
    make_task = lambda config: InMemoryTask(config, data)
  # The auto fields, resolved once: the task, the loop and config.json see these values.
  recorded = workdir_lib.effective_config(workdir) if workdir_lib.has_progress(workdir) else None
  config = backend_defaults.resolve(config, recorded)
  _check_memory_fraction(config)
  workdir_lib.check_resumable(config, workdir)
  preemption.check("before the workdir was opened")
  with workdir_lib.locked(workdir, enabled=jax.process_index() == 0):
    loop.prepare_workdir(config, workdir)
    task = make_task(config)
    preemption.check("while building the task")
    logging.info("Config (validated):\n%s", config)  # Logged only once it is known good.
    logging.info("Run: %s", json.dumps(task.run_info))
    return loop.run(config, workdir, task)


def _check_memory_fraction(config: ml_collections.ConfigDict) -> None:
  """Warns when config.memory_fraction cannot apply: JAX took its GPU memory when
  it started, and only `python -m rethinking.main` sets it before that."""
  fraction = config.get("memory_fraction", 0)
  applied = os.environ.get("XLA_CLIENT_MEM_FRACTION",
                           os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""))
  if fraction and jax.default_backend() == "gpu" and applied != f"{fraction:g}":
    logging.warning("config.memory_fraction=%g does not apply in this process: JAX took its "
                    "GPU memory when it started. Run through `python -m rethinking.main`, or "
                    "set XLA_CLIENT_MEM_FRACTION=%g before importing jax.", fraction, fraction)


def _data_parallel_task(config: ml_collections.ConfigDict):
  """Builds the ImageNet input (validating it) and returns the task's constructor, which
  takes the resolved config (default: `config`)."""
  from rethinking import parallel  # pylint: disable=g-import-not-at-top
  from rethinking.data import imagenet  # pylint: disable=g-import-not-at-top
  per_device = parallel.check_batch(config.batch_size)
  eval_per_device = parallel.check_batch(config.eval_batch_size, "eval_batch_size")
  pipeline = imagenet.ImageNetInput(
      config.dataset, data_dir=config.data_dir or None, image_size=config.image_size,
      per_device_batch=per_device, eval_per_device_batch=eval_per_device,
      augment=config.augment != "none", corruption=config.corruption,
      corrupt_prob=config.corrupt_prob, seed=data_seed(config), num_train=config.num_train,
      min_image_size=1)  # validation.check_config owns the per-model minimum.
  return lambda resolved=config: parallel.DataParallelTask(resolved, pipeline)
