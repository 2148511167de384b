"""Building blocks shared by the model zoo: ConvModule, the classifier head, LRN, max-pool.

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
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

HIDDEN_INIT = nn.initializers.he_normal()
BN_EPSILON = 1e-3  # Keras / TF-slim Inception value.


class Classifier(nn.Module):
  """Fields every model of the zoo has; `__call__(x, train)` returns float32 logits."""

  num_classes: int
  dropout_rate: float = 0.0  # Dropout right before the final Dense, train mode only.
  dtype: Any = jnp.float32  # Compute dtype; parameters are float32.
  # The pmap axis the global batch is split over: dropout keys each example by its index
  # in the global batch along it (and BatchNorm averages its statistics over it).
  axis_name: str | None = None


class BatchNormClassifier(Classifier):
  """A Classifier built from ConvModules, with their BatchNorm options."""

  bn_momentum: float = 0.99
  # Batch statistics over the global batch (every device along axis_name), or over each
  # device's own batch (False: as each of the paper's asynchronous workers had).
  bn_sync: bool = True

  def conv_module(self, train: bool, use_bn: bool = True):
    """`conv(features, kernel_size, ...)(x)` applies a ConvModule with this model's options.

    The ConvModule is created where `conv` is called, so it belongs to the module
    whose compact method calls it (an InceptionBlock, or the model itself).
    """
    def conv(*args, **kwargs):
      module = ConvModule(*args, use_bn=use_bn, bn_momentum=self.bn_momentum,
                          axis_name=self.axis_name if self.bn_sync else None,
                          dtype=self.dtype, **kwargs)
      return functools.partial(module, train=train)
    return conv


class BatchNorm(nn.Module):
  """flax's `nn.BatchNorm(use_scale=False)` over the last axis, with a fused gradient.

  Same variables (params 'bias'; batch_stats 'mean' and 'var', float32), the same
  statistics (float32, E[x^2] - E[x]^2 clipped at 0, one `pmean` over `axis_name`)
  and the same running-average update. On one device (axis_name None) training mode
  is differentiated by a hand-written VJP, dx = inv * (g - mean(g) - xhat *
  mean(g * xhat)): two fused passes over the activations instead of autodiff's
  chain through the statistics (4% of the small Inception's step on a 2-core CPU).
  With an axis_name, autodiff as in flax: a collective in a custom VJP would not
  work under `jax.grad(jax.vmap(..., axis_name=...))`.
  """

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = BN_EPSILON
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    if self.use_running_average:
      y = (x - ra_mean.value) * lax.rsqrt(ra_var.value + self.epsilon) + bias
      return y.astype(self.dtype)
    axis_name = None if self.is_initializing() else self.axis_name
    if axis_name is None:
      y, mean, var = _batch_norm_train(x, bias, self.epsilon)
    else:
      xf, mean, var, _, inv = _batch_norm_stats(x, self.epsilon, axis_name)
      y = (xf - mean) * inv + bias
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(self.dtype)


def _batch_mean(values, axis_name):
  """Means over all but the last axis (and over `axis_name`, in one pmean)."""
  axes = tuple(range(values[0].ndim - 1))
  means = jnp.stack([v.mean(axes) for v in values])
  if axis_name is not None:
    means = lax.pmean(means, axis_name)
  return tuple(means)


def _batch_norm_stats(x, epsilon, axis_name):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, mean2 = _batch_mean((xf, xf * xf), axis_name)
  raw_var = mean2 - mean * mean
  var = jnp.maximum(0.0, raw_var)
  return xf, mean, var, raw_var > 0, lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _batch_norm_train(x, bias, epsilon):
  """(normalized x + bias in float32, batch mean, batch variance), on one device."""
  xf, mean, var, _, inv = _batch_norm_stats(x, epsilon, None)
  return (xf - mean) * inv + bias, mean, var


def _batch_norm_train_fwd(x, bias, epsilon):
  xf, mean, var, var_positive, inv = _batch_norm_stats(x, epsilon, None)
  return ((xf - mean) * inv + bias, mean, var), (x, mean, inv, var_positive)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  # The batch statistics only feed the running averages: their cotangents are zero.
  del epsilon
  x, mean, inv, var_positive = residuals
  g = cotangents[0]
  xhat = (x.astype(g.dtype) - mean) * inv
  mean_g, mean_gx = _batch_mean((g, g * xhat), None)
  # Where the variance was clipped to 0, it does not depend on x.
  dx = inv * (g - mean_g - xhat * jnp.where(var_positive, mean_gx, 0.0))
  return dx.astype(x.dtype), jnp.sum(g, axis=tuple(range(g.ndim - 1)))


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


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
      x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                    epsilon=BN_EPSILON, axis_name=self.axis_name, dtype=self.dtype)(x)
    return nn.relu(x)


class InceptionBlock(nn.Module):
  """Parallel branches concatenated over channels; subclasses define `branches`."""

  @nn.compact
  def __call__(self, x, conv: Callable[..., Callable]):
    """`conv` is a `BatchNormClassifier.conv_module`."""
    return jnp.concatenate(self.branches(x, conv), axis=-1)

  def branches(self, x, conv) -> list:
    raise NotImplementedError


class ExampleDropout(nn.Module):
  """Dropout whose mask for an example depends on the example, not on the device layout.

  flax's nn.Dropout draws one mask for the whole local batch from one key, so under
  pmap a device's masks depend on how the global batch was split. Here example i of
  the global batch (device d's example j is i = d * local_batch + j along axis_name)
  draws its mask from fold_in(key, i): 8 devices x 2 examples get exactly the masks
  of 1 device x 16, and a run resumed on another device count continues identically.
  """

  rate: float
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    index = jnp.arange(x.shape[0])
    if self.axis_name is not None:
      index = index + lax.axis_index(self.axis_name) * x.shape[0]
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(self.make_rng("dropout"), index)
    mask = jax.vmap(lambda key: jax.random.bernoulli(key, keep, x.shape[1:]))(keys)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


def logits_head(x, num_classes: int, dropout_rate: float, train: bool,
               name: str | None = None, axis_name: str | None = None):
  """Dropout (train mode only, when rate > 0) then a float32 Dense to logits.

  Call inside a compact `__call__`: the layers become the caller's submodules. The
  head runs in float32 so bfloat16 models still produce precise logits (cheap: it is
  one small matmul). `axis_name`: the model's, for ExampleDropout.
  """
  if dropout_rate > 0:
    x = ExampleDropout(dropout_rate, axis_name)(x, deterministic=not train)
  return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                  name=name)(x.astype(jnp.float32))


def global_mean_pool(x):
  """Mean over the spatial axes of NHWC, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# Named scopes tag these layers' equations in traces, HLO metadata and profiles (the
# per-op profile, rethinking.profile_ops, finds the layers by them).
@jax.named_scope("lrn")
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
  return (xf * _inverse_power(bias + alpha * sqr_sum, beta)).astype(x.dtype)


def _inverse_power(d, beta: float):
  """d ** -beta; rsqrt-based for TF's beta = 0.75 and 0.5 (pow costs half of the
  layer on a CPU, forward and backward; same value to ~1 ulp)."""
  if beta == 0.75:
    q = lax.rsqrt(d)
    return q * jnp.sqrt(q)
  if beta == 0.5:
    return lax.rsqrt(d)
  return d ** -beta


@jax.named_scope("max_pool")
def max_pool(x, window: Sequence[int], strides: Sequence[int], padding="VALID"):
  """`nn.max_pool` over NHWC (same values), with a gradient that is cheap on a CPU.

  XLA's gradient of a strided max-pool (select-and-scatter, or JAX's pairwise
  select-and-gather) runs as slow generic window loops on a CPU: a third of
  AlexNet's step. Here the pool is two 1-D pools (rows, then columns; max is
  separable), each written with unit-stride slices of the input reshaped into
  stride phases, and its gradient is routed by the argmax index saved in the
  forward pass. The gradient goes to the first maximum of each 1-D window. Among
  exact ties (rare in float32, save zeros after a ReLU, whose gradient the ReLU
  discards; a few per 1,000 windows in bfloat16) the routing may differ from
  XLA's, which is implementation-defined too; both are valid subgradients with the
  same total.

  Args:
    x: [N, H, W, C].
    window, strides: (rows, columns).
    padding: "SAME", "VALID" or ((top, bottom), (left, right)); padding is -inf.

  Returns:
    [N, H', W', C], equal to `nn.max_pool(x, window, strides, padding)`.
  """
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  (pad_h, pad_w) = (tuple(p) for p in padding)
  if min(_pool_geometry(x.shape[1], window[0], strides[0], pad_h)[0],
         _pool_geometry(x.shape[2], window[1], strides[1], pad_w)[0]) <= 0:
    return nn.max_pool(x, tuple(window), strides=tuple(strides), padding=padding)  # Empty.
  x = _max_pool_1d(x, 1, window[0], strides[0], pad_h)
  return _max_pool_1d(x, 2, window[1], strides[1], pad_w)


def _pool_geometry(size: int, window: int, stride: int, pad: tuple[int, int]):
  """Output length, and the length in whole stride blocks covering every window."""
  out = (size + pad[0] + pad[1] - window) // stride + 1
  return out, out + (window - 1) // stride


def _taps(x, axis: int, window: int, stride: int, pad: tuple[int, int]):
  """The `window` unit-stride slices whose elementwise max is the pool along `axis`.

  Tap t of output i reads input i * stride + t - pad[0]; with the (padded) axis
  reshaped to [blocks, stride] that is block i + t // stride, phase t % stride.
  """
  size = x.shape[axis]
  out, blocks = _pool_geometry(size, window, stride, pad)
  config = [(0, 0, 0)] * x.ndim
  config[axis] = (pad[0], blocks * stride - size - pad[0], 0)  # Negative: crops.
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), config)
  xr = xp.reshape(x.shape[:axis] + (blocks, stride) + x.shape[axis + 1:])
  taps = []
  for t in range(window):
    tap = lax.slice_in_dim(xr, t // stride, t // stride + out, axis=axis)
    taps.append(lax.index_in_dim(tap, t % stride, axis=axis + 1, keepdims=False))
  return taps


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_1d(x, axis, window, stride, pad):
  out = None
  for tap in _taps(x, axis, window, stride, pad):
    out = tap if out is None else jnp.maximum(out, tap)
  return out


def _max_pool_1d_fwd(x, axis, window, stride, pad):
  out, argmax = None, None
  for t, tap in enumerate(_taps(x, axis, window, stride, pad)):
    if out is None:
      out, argmax = tap, jnp.zeros(tap.shape, jnp.int8)
    else:
      argmax = jnp.where(tap > out, jnp.int8(t), argmax)
      out = jnp.maximum(out, tap)
  return out, (argmax, x.shape[axis])


def _max_pool_1d_bwd(axis, window, stride, pad, residuals, g):
  """Each output's gradient goes to its argmax tap; the taps' shifted sums, phase
  by phase, interleave back into the input's (padded) axis."""
  argmax, size = residuals
  out, blocks = _pool_geometry(size, window, stride, pad)
  zero = jnp.zeros((), g.dtype)
  phases = [None] * stride
  for t in range(window):
    config = [(0, 0, 0)] * g.ndim
    config[axis] = (t // stride, blocks - out - t // stride, 0)
    part = lax.pad(jnp.where(argmax == t, g, zero), zero, config)
    p = t % stride
    phases[p] = part if phases[p] is None else phases[p] + part
  shape = list(g.shape)
  shape[axis] = blocks
  phases = [zero_or if zero_or is not None else jnp.zeros(shape, g.dtype)
            for zero_or in phases]
  dx = jnp.stack(phases, axis=axis + 1)
  dx = dx.reshape(g.shape[:axis] + (blocks * stride,) + g.shape[axis + 1:])
  config = [(0, 0, 0)] * g.ndim
  config[axis] = (-pad[0], size + pad[0] - blocks * stride, 0)
  return (lax.pad(dx, zero, config),)


_max_pool_1d.defvjp(_max_pool_1d_fwd, _max_pool_1d_bwd)
