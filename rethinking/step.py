"""The train and eval steps: pure functions, written once.

Both take an `axis_name`: on one device (CIFAR-10) they are jitted as they are;
across devices (ImageNet) the very same functions are `jax.pmap`ped with
axis_name='batch', which averages gradients and BatchNorm statistics and sums
the metric counts over devices.

Metrics come back as on-device *sums* (loss, correct, count) so the caller can
accumulate them over many steps and fetch them once per log interval.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics (an empty dict for models without BN)."""

  batch_stats: Any = flax.struct.field(default_factory=dict)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _variables(state: TrainState, params) -> dict:
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def _sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Masked metric sums: cross-entropy, top-1 and top-5 hits, example count.

  `mask` is [B] (scalar sums) or [G, B] (one sum per group of examples, e.g. the
  clean and the corrupted training examples, from a single forward pass).
  """
  k = min(5, logits.shape[-1])
  top5 = jax.lax.top_k(logits, k)[1]
  return {
      "loss": jnp.sum(cross_entropy(logits, labels) * mask, axis=-1),
      "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask, axis=-1),
      "correct_top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask, axis=-1),
      "count": jnp.sum(mask, axis=-1),
  }


def _reduce(tree, op, axis_name: str | None):
  return tree if axis_name is None else jax.tree_util.tree_map(lambda x: op(x, axis_name), tree)


def train_step(state: TrainState, batch: dict[str, jax.Array], dropout_rng: jax.Array, *,
               axis_name: str | None = None,
               aux_loss_weight: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a batch of preprocessed images.

  Args:
    state: the train state; `state.apply_fn` is the model's `apply`.
    batch: 'image' float [B, H, W, C] and 'label' int32 [B].
    dropout_rng: folded with the step, so a resumed run draws the same masks.
      Under pmap it is the same on every device (see layers.ExampleDropout).
    axis_name: the pmap axis to average gradients and BN statistics over.
    aux_loss_weight: weight of an auxiliary head's loss (models returning
      (logits, aux_logits) in train mode, e.g. Inception V3 with aux_logits).

  Returns:
    The new state and metric sums over the (global) batch.
  """
  # The same key on every device: the models' dropout keys each example by its index
  # in the global batch (layers.ExampleDropout), so masks do not depend on the layout.
  rng = jax.random.fold_in(dropout_rng, state.step)
  has_bn = bool(state.batch_stats)

  def loss_fn(params):
    out = state.apply_fn(_variables(state, params), batch["image"], train=True,
                         rngs={"dropout": rng}, mutable=["batch_stats"] if has_bn else False)
    logits, updates = out if has_bn else (out, {})
    loss = 0.0
    if isinstance(logits, tuple):  # (logits, aux_logits)
      logits, aux_logits = logits
      loss = aux_loss_weight * jnp.mean(cross_entropy(aux_logits, batch["label"]))
    return loss + jnp.mean(cross_entropy(logits, batch["label"])), (logits, updates)

  grads, (logits, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = _reduce(grads, jax.lax.pmean, axis_name)
  new_state = state.apply_gradients(grads=grads)
  if has_bn:
    new_state = new_state.replace(
        batch_stats=_reduce(updates["batch_stats"], jax.lax.pmean, axis_name))
  sums = _sums(logits, batch["label"], jnp.ones_like(batch["label"], jnp.float32))
  return new_state, _reduce(sums, jax.lax.psum, axis_name)


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              axis_name: str | None = None) -> dict[str, jax.Array]:
  """Metric sums of the model in inference mode; batch['mask'] marks real (unpadded) examples."""
  logits = state.apply_fn(_variables(state, state.params), batch["image"], train=False)
  logits = logits[0] if isinstance(logits, tuple) else logits
  return _reduce(_sums(logits, batch["label"], batch["mask"]), jax.lax.psum, axis_name)


def init_variables(rng: jax.Array, model: flax.linen.Module,
                   image_shape: tuple[int, ...]) -> dict:
  """The model's initial variables (params, BN statistics) for inputs of `image_shape`."""
  if getattr(model, "axis_name", None):  # Initialized outside pmap, so without the axis.
    model = model.clone(axis_name=None)
  return jax.jit(model.init, static_argnames="train")(
      rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def create_train_state(rng: jax.Array | None, model: flax.linen.Module,
                       image_shape: tuple[int, ...], tx: optax.GradientTransformation,
                       variables: dict | None = None) -> TrainState:
  """Initializes parameters (and BN statistics) for inputs of `image_shape` (H, W, C),
  or starts from `variables` (from init_variables) where given."""
  if variables is None:
    variables = init_variables(rng, model, image_shape)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}))

