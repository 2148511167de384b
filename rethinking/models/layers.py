"""Building blocks shared by the model zoo: ConvModule, the classifier head, LRN.

Conventions every model follows (the training code depends on them):
  * `dtype` is the compute dtype; parameters are always float32 (`param_dtype`), so
    bfloat16 compute keeps float32 master weights.
  * The classifier runs in float32 and logits are float32 whatever `dtype` is.
  * Initialization (the paper does not state one): He normal (truncated, fan_in) for
    every conv and hidden Dense, since each is followed by a ReLU; LeCun normal for
    the final classifier (flax's default); zero biases and BatchNorm offsets.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

HIDDEN_INIT = nn.initializers.he_normal()
BN_EPSILON = 1e-3  # Keras / TF-slim Inception value.


class Classifier(nn.Module):
  """Fields every model of the zoo has; `__call__(x, train)` returns float32 logits."""

  num_classes: int
  dropout_rate: float = 0.0  # Dropout right before the final Dense, train mode only.
  dtype: Any = jnp.float32  # Compute dtype; parameters are float32.


class BatchNormClassifier(Classifier):
  """A Classifier built from ConvModules, with their BatchNorm options."""

  axis_name: str | None = None  # The pmap/vmap axis to average batch statistics over.
  bn_momentum: float = 0.99

  def conv_module(self, train: bool, use_bn: bool = True):
    """`conv(features, kernel_size, ...)(x)` applies a ConvModule with this model's options.

    The ConvModule is created where `conv` is called, so it belongs to the module
    whose compact method calls it (an InceptionBlock, or the model itself).
    """
    def conv(*args, **kwargs):
      module = ConvModule(*args, use_bn=use_bn, bn_momentum=self.bn_momentum,
                          axis_name=self.axis_name, dtype=self.dtype, **kwargs)
      return functools.partial(module, train=train)
    return conv


class ConvModule(nn.Module):
  """Conv -> BatchNorm -> ReLU, as TF-slim's conv2d with a batch_norm normalizer.

  With BatchNorm the conv has no bias and BatchNorm has an offset but no scale
  (TF-slim's and Keras InceptionV3's default: the following ReLU makes a scale
  redundant up to the next layer's weights). Without BatchNorm the conv has a bias,
  so both variants have the same number of trainable parameters.

  BatchNorm momentum has Keras semantics (flax uses the same):
  running = momentum * running + (1 - momentum) * batch.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str = "SAME"
  use_bn: bool = True
  bn_momentum: float = 0.99
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(
        self.features, self.kernel_size, self.strides, self.padding,
        use_bias=not self.use_bn, kernel_init=HIDDEN_INIT,
        dtype=self.dtype, param_dtype=jnp.float32)(x)
    if self.use_bn:
      x = nn.BatchNorm(
          use_running_average=not train, momentum=self.bn_momentum,
          epsilon=BN_EPSILON, use_scale=False, axis_name=self.axis_name,
          dtype=self.dtype, param_dtype=jnp.float32)(x)
    return nn.relu(x)


class InceptionBlock(nn.Module):
  """Parallel branches concatenated over channels; subclasses define `branches`."""

  @nn.compact
  def __call__(self, x, conv: Callable[..., Callable]):
    """`conv` is a `BatchNormClassifier.conv_module`."""
    return jnp.concatenate(self.branches(x, conv), axis=-1)

  def branches(self, x, conv) -> list:
    raise NotImplementedError


def logits_head(x, num_classes: int, dropout_rate: float, train: bool,
               name: str | None = None):
  """Dropout (train mode only, when rate > 0) then a float32 Dense to logits.

  Call inside a compact `__call__`: the layers become the caller's submodules. The
  head runs in float32 so bfloat16 models still produce precise logits (cheap: it is
  one small matmul).
  """
  if dropout_rate > 0:
    x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                  name=name)(x.astype(jnp.float32))


def global_mean_pool(x):
  """Mean over the spatial axes of NHWC, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def local_response_normalization(x, depth_radius: int = 5, bias: float = 1.0,
                                 alpha: float = 1.0, beta: float = 0.5):
  """`tf.nn.local_response_normalization` over the channel (last) axis.

    sqr_sum[a, b, c, d] = sum(x[a, b, c, d - depth_radius : d + depth_radius + 1] ** 2)
    output = x / (bias + alpha * sqr_sum) ** beta

  Defaults are TF's. Note TF's alpha multiplies the plain sum (PyTorch and Caffe
  divide alpha by the window size). The windowed sum is a `reduce_window` over the
  channel axis with zero padding, i.e. (2r + 1) adds per element: no cumulative-sum
  cancellation and no matmul (which an accelerator may run at reduced precision).
  The computation is in at least float32 (bfloat16 inputs are upcast, the result cast
  back); in float32 it matches TF to rounding (sums in a different order, ~1e-6
  relative).
  """
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  r = depth_radius
  sqr_sum = lax.reduce_window(
      xf * xf, 0.0, lax.add, window_dimensions=(1,) * (x.ndim - 1) + (2 * r + 1,),
      window_strides=(1,) * x.ndim, padding=((0, 0),) * (x.ndim - 1) + ((r, r),))
  return (xf * (bias + alpha * sqr_sum) ** -beta).astype(x.dtype)
