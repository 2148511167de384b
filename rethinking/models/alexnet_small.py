"""Small AlexNet: TensorFlow's CIFAR-10 tutorial network (models/tutorials/image/cifar10).

  conv1 5x5x64 (bias, ReLU) -> max-pool 3x3/2 SAME -> LRN
  conv2 5x5x64 (bias, ReLU) -> LRN -> max-pool 3x3/2 SAME
  -> Dense 384 -> Dense 192 (ReLU) -> Dense num_classes.

The order in the second stage (LRN before pooling) is the tutorial's; PAPER.md's
"[conv -> pool -> LRN] x 2" shorthand does not change the parameter count:
1,387,786 on 28x28x3 inputs (the first Dense sees 7 * 7 * 64 features).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from rethinking.models.layers import (
    HIDDEN_INIT, Classifier, local_response_normalization, logits_head, max_pool)

# The tutorial's tf.nn.lrn(x, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75).
lrn = functools.partial(local_response_normalization, depth_radius=4, bias=1.0,
                        alpha=0.001 / 9.0, beta=0.75)


def pool_3x3_s2(x):
  return max_pool(x, (3, 3), (2, 2), "SAME")


class AlexNetSmall(Classifier):
  """TF CIFAR-10 tutorial net; no BatchNorm, so no 'batch_stats' collection."""

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, kernel_size=(5, 5), padding="SAME",
                             kernel_init=HIDDEN_INIT, dtype=self.dtype,
                             param_dtype=jnp.float32)
    dense = functools.partial(nn.Dense, kernel_init=HIDDEN_INIT, dtype=self.dtype,
                              param_dtype=jnp.float32)
    x = lrn(pool_3x3_s2(nn.relu(conv(64)(x.astype(self.dtype)))))
    x = pool_3x3_s2(lrn(nn.relu(conv(64)(x))))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(dense(384)(x))
    x = nn.relu(dense(192)(x))
    return logits_head(x, self.num_classes, self.dropout_rate, train, axis_name=self.axis_name)


def alexnet_small(num_classes: int = 10, **kwargs) -> AlexNetSmall:
  """The paper's small AlexNet (TF CIFAR-10 tutorial net with LRN)."""
  return AlexNetSmall(num_classes=num_classes, **kwargs)
