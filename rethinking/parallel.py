"""Synchronous data parallelism: the same train step, `jax.pmap`ped over every device.

The paper trained Inception V3 on ImageNet with asynchronous SGD on 50 workers;
here every device of every process takes a slice of the global batch, and
`lax.pmean` averages gradients and BatchNorm statistics (the step's
`axis_name='batch'`), so all replicas stay identical. As in flax's imagenet
example, the state goes in with `in_axes=None` and comes back with
`out_axes=None`: one logical copy, not a stacked one per device, so the
checkpoint does not depend on the device count and a run can resume on a
different number of devices.

Global batch = `config.batch_size`, split evenly over `jax.device_count()`
devices; the learning rate follows the linear scaling rule (Goyal et al. 2017):
`learning_rate * batch_size / base_batch_size`. BatchNorm statistics are over the
global batch (`config.bn_sync`, default) or over each device's own batch, as the
paper's workers had; dropout masks follow each example's index in the global batch,
so neither the masks nor (with bn_sync) the step depend on the device layout.
"""

from __future__ import annotations

import collections
import functools
import itertools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rethinking import backend_defaults
from rethinking import loop
from rethinking import optim
from rethinking import step as step_lib
from rethinking.models import get_model

AXIS = "batch"
_INIT, _DROPOUT = 0, 3


def to_inputs(images: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 images to Inception's input range [-1, 1] (on the device)."""
  return (images.astype(jnp.float32) * (2.0 / 255.0) - 1.0).astype(dtype)


def _train_step(state, sums, batch, dropout_rng, dtype, aux_loss_weight):
  batch = dict(batch, image=to_inputs(batch["image"], dtype))
  new_state, step_sums = step_lib.train_step(state, batch, dropout_rng, axis_name=AXIS,
                                             aux_loss_weight=aux_loss_weight)
  return new_state, loop.accumulate(sums, step_sums, state.step)


def _eval_step(state, sums, batch, dtype):
  return loop.add_sums(sums, step_lib.eval_step(
      state, dict(batch, image=to_inputs(batch["image"], dtype)), axis_name=AXIS))


def pmapped_steps(dtype=jnp.float32, aux_loss_weight: float = 0.0):
  """(train_step, eval_step), pmapped over local devices.

  train_step(state, sums, batch, dropout_rng) -> (state, sums) and
  eval_step(state, sums, batch) -> sums: the state and the running metric sums go
  in unreplicated and come back so (the sums are `psum`med, hence identical on every
  device), and both are donated.
  """
  # Donating the unreplicated state fails across processes in jax 0.10 (pmap reshards
  # it to the local devices, then finds a donated buffer deleted), so only a
  # single-process run donates.
  single = jax.process_count() == 1
  train = jax.pmap(functools.partial(_train_step, dtype=dtype, aux_loss_weight=aux_loss_weight),
                   axis_name=AXIS, in_axes=(None, None, 0, None), out_axes=(None, None),
                   donate_argnums=(0, 1) if single else ())
  evaluate = jax.pmap(functools.partial(_eval_step, dtype=dtype), axis_name=AXIS,
                      in_axes=(None, None, 0), out_axes=None,
                      donate_argnums=(1,) if single else ())
  return train, evaluate


@functools.cache
def _identity():
  # pmap needs one mapped argument: a dummy with the device axis. Donating the tree
  # (single process, as in pmapped_steps) lets a tree already placed pass through
  # without a second copy of the state in memory.
  return jax.pmap(lambda tree, _: tree, axis_name=AXIS, in_axes=(None, 0), out_axes=None,
                  donate_argnums=(0,) if jax.process_count() == 1 else ())


def replicated(tree):
  """`tree` placed as the pmapped steps return their unreplicated outputs.

  pmap keys its compilations on where the inputs live as well as on their shapes:
  a fresh state or fresh sums (uncommitted, on one device) and the step's own
  outputs (committed to every device) would each compile the step anew. Placed
  here first, a run compiles each step once, not at its first call, second call
  and first new epoch (Inception V3 at 299: ~20 s each on this CPU). The input is
  donated in single-process runs (as the steps donate theirs): use the result.
  """
  return _identity()(tree, jnp.zeros(jax.local_device_count()))


def device_batches(batches: Iterator[dict], size: int = 2) -> Iterator[dict]:
  """Host batches `[local_devices, per_device, ...]` placed on the local devices, `size` ahead.

  Device d receives x[d], a view of the host batch, as a shard of one array laid
  out as pmap takes its mapped inputs: no host copy per step. (flax's
  prefetch_to_device first re-stacks the slices with np.stack: ~100 ms and a
  second copy of a 69 MB Inception V3 batch on a CPU core, every step.)
  """
  devices = jax.local_devices()
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                        jax.sharding.PartitionSpec(AXIS))
  queue = collections.deque()
  for batch in itertools.islice(batches, size):
    queue.append(jax.device_put(batch, sharding))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(batches, 1):  # Transfers overlap the running step.
      queue.append(jax.device_put(batch, sharding))


def check_batch(batch_size: int, field: str = "batch_size") -> int:
  """The per-device batch; the global batch must split evenly over every device."""
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f"config.{field}={batch_size} is not divisible by the {n} devices "
                     f"({jax.process_count()} process(es) x {jax.local_device_count()}); use a "
                     f"multiple of {n}, e.g. {max(n, batch_size // n * n)}")
  return batch_size // n


class DataParallelTask:
  """A tf.data pipeline (ImageNet) feeding a pmapped step on every device of every host."""

  def __init__(self, config: ml_collections.ConfigDict, pipeline: Any):
    self.config, self.pipeline = config, pipeline
    self.steps_per_epoch = pipeline.steps_per_epoch
    self.dtype = jnp.bfloat16 if backend_defaults.half_precision(config) else jnp.float32
    aux = config.get("aux_loss_weight", 0.0)
    self.model = get_model(config.model, num_classes=pipeline.num_classes,
                           dropout_rate=config.dropout_rate, dtype=self.dtype, axis_name=AXIS,
                           bn_sync=config.get("bn_sync", True),
                           bn_momentum=config.get("bn_momentum", 0.99),
                           **({"aux_logits": True} if aux > 0 else {}))
    lr = config.learning_rate * config.batch_size / config.base_batch_size
    self.learning_rate_fn = optim.learning_rate_schedule(lr, config.lr_decay, self.steps_per_epoch)
    self.tx = optim.make_optimizer(self.learning_rate_fn, config.momentum, config.weight_decay)
    self.root = jax.random.PRNGKey(config.seed)
    self.dropout_key = jax.random.fold_in(self.root, _DROPOUT)
    self._train, self._eval = pmapped_steps(self.dtype, aux)
    self._iterator: Iterator | None = None
    self._next_step: int | None = None
    self.run_info = {"num_train": pipeline.num_train, "num_test": pipeline.num_eval,
                     "num_classes": pipeline.num_classes, "steps_per_epoch": self.steps_per_epoch,
                     "global_batch": config.batch_size, "devices": jax.device_count(),
                     "processes": jax.process_count(), "learning_rate_scaled": lr,
                     "bn_sync": config.get("bn_sync", True),
                     "data_fingerprint": pipeline.fingerprint}

  def init_state(self) -> step_lib.TrainState:
    size = self.config.image_size
    state = step_lib.create_train_state(jax.random.fold_in(self.root, _INIT), self.model,
                                        (size, size, 3), self.tx)
    self.run_info["num_params"] = int(sum(p.size for p in jax.tree_util.tree_leaves(state.params)))
    return state

  def _batches(self, epoch: int, start: int) -> Iterator:
    return device_batches(iter(self.pipeline.train_batches(epoch, start_step=start)))

  def train(self, state, sums, step: int, num_steps: int):
    if self._next_step != step:  # First call, a new epoch, or after a resume.
      epoch = step // self.steps_per_epoch
      self._iterator = self._batches(epoch, step - epoch * self.steps_per_epoch)
      state, sums = replicated((state, sums))  # A new state or new sums: one compile.
    for _ in range(num_steps):
      state, sums = self._train(state, sums, next(self._iterator), self.dropout_key)
    self._next_step = step + num_steps
    if self._next_step % self.steps_per_epoch == 0:
      self._next_step = None  # The next epoch starts a new iterator.
    return state, sums

  def evaluate(self, state, train_set: bool = True) -> dict[str, Any]:
    del train_set  # No pass over the training set here: ImageNet's is a whole epoch.
    sums = replicated(loop.zero_sums())
    for batch in self.pipeline.eval_batches():
      sums = self._eval(state, sums, batch)
    row = loop.means(sums, "test")
    row["test_count"] = int(float(sums["count"]))
    row["corruption"] = self.config.corruption
    return row

