"""Multilayer perceptrons on flattened 28x28x3 images: MLP 1x512 and MLP 3x512."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from rethinking.models.layers import HIDDEN_INIT, Classifier, logits_head


class MLP(Classifier):
  """`depth` hidden ReLU layers of `width` units, then the classifier."""

  depth: int = 1
  width: int = 512

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width, kernel_init=HIDDEN_INIT, dtype=self.dtype,
                           param_dtype=jnp.float32)(x))
    return logits_head(x, self.num_classes, self.dropout_rate, train, axis_name=self.axis_name)


def mlp_1x512(num_classes: int = 10, **kwargs) -> MLP:
  """2352 -> 512 -> num_classes: 1,209,866 parameters for 10 classes."""
  return MLP(num_classes=num_classes, depth=1, width=512, **kwargs)


def mlp_3x512(num_classes: int = 10, **kwargs) -> MLP:
  """2352 -> 512 -> 512 -> 512 -> num_classes: 1,735,178 parameters for 10 classes."""
  return MLP(num_classes=num_classes, depth=3, width=512, **kwargs)
