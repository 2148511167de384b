"""SGD with momentum, a per-epoch exponential learning-rate decay and L2 weight decay."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(base_lr: float, lr_decay: float, steps_per_epoch: int) -> optax.Schedule:
  """base_lr * lr_decay ** epoch, constant within an epoch (Appendix A: 0.95 per epoch)."""
  return optax.exponential_decay(base_lr, transition_steps=steps_per_epoch,
                                 decay_rate=lr_decay, staircase=True)


def _is_kernel(params):
  # Decay weights (conv and dense kernels), not biases or BatchNorm offsets, as TF-slim does.
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(learning_rate: optax.Schedule, momentum: float,
                   weight_decay: float) -> optax.GradientTransformation:
  """SGD with momentum; weight_decay * w added to the gradient = an L2 penalty wd/2 ||w||^2."""
  sgd = optax.sgd(learning_rate, momentum=momentum)
  if weight_decay <= 0:
    return sgd
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=_is_kernel), sgd)
