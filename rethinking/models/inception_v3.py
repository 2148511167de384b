"""Inception V3 (Szegedy et al. 2016) in the Keras / TF-slim layout, for ImageNet.

Every conv is a ConvModule (no bias; BatchNorm with offset, no scale), so without the
auxiliary head the network has 23,817,352 trainable parameters for 1000 classes,
plus 34,432 BatchNorm statistics in 'batch_stats' (Keras: 23,851,784 in all).

Blocks are named as in Keras (`mixed0` ... `mixed10`); torchvision's names for the
same blocks are InceptionA (mixed0-2), B (mixed3), C (mixed4-7), D (mixed8), E
(mixed9-10). Average pools exclude padding, as TF's SAME pooling does.

`aux_logits=True` adds the auxiliary classifier on mixed7 (17x17x768 at 299x299):
avg-pool 5x5/3 VALID -> ConvModule 1x1x128 -> ConvModule 5x5x768 VALID -> global mean
-> float32 Dense (+3,325,800 parameters for 1000 classes). Then `__call__` returns
`(logits, aux_logits)` when `train` is True and just `logits` when it is False, so
evaluation code is the same with or without the head. The head's parameters exist
whatever `train` was at init. On inputs below 299x299 the 17x17 grid shrinks, so the
pool window is clipped to the grid and the 5x5 conv falls back to SAME padding when
the grid is smaller than 5x5; parameter shapes do not depend on the input size.
"""

from __future__ import annotations

import flax.linen as nn

from rethinking.models.layers import (
    BatchNormClassifier, InceptionBlock, global_mean_pool, logits_head, max_pool)

MIN_SIZE = 75  # Smaller inputs leave no pixels after mixed8's stride-2 VALID convs.


def avg_pool_3x3(x):
  return nn.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False)


def max_pool_3x3_s2(x):
  return max_pool(x, (3, 3), (2, 2), "VALID")


class Mixed35(InceptionBlock):
  """mixed0-2 (InceptionA), 35x35: 1x1, 5x5, double 3x3 and pool branches."""

  pool_features: int

  def branches(self, x, conv):
    return [conv(64, (1, 1))(x),
            conv(64, (5, 5))(conv(48, (1, 1))(x)),
            conv(96, (3, 3))(conv(96, (3, 3))(conv(64, (1, 1))(x))),
            conv(self.pool_features, (1, 1))(avg_pool_3x3(x))]


class Reduce35(InceptionBlock):
  """mixed3 (InceptionB): 35x35 -> 17x17."""

  def branches(self, x, conv):
    double_3x3 = conv(96, (3, 3))(conv(64, (1, 1))(x))
    return [conv(384, (3, 3), strides=(2, 2), padding="VALID")(x),
            conv(96, (3, 3), strides=(2, 2), padding="VALID")(double_3x3),
            max_pool_3x3_s2(x)]


class Mixed17(InceptionBlock):
  """mixed4-7 (InceptionC), 17x17: factorized 7x7 branches with `c7` inner filters."""

  c7: int

  def branches(self, x, conv):
    c7 = self.c7
    double_7x7 = conv(c7, (1, 7))(conv(c7, (7, 1))(conv(c7, (1, 1))(x)))
    return [conv(192, (1, 1))(x),
            conv(192, (7, 1))(conv(c7, (1, 7))(conv(c7, (1, 1))(x))),
            conv(192, (1, 7))(conv(c7, (7, 1))(double_7x7)),
            conv(192, (1, 1))(avg_pool_3x3(x))]


class Reduce17(InceptionBlock):
  """mixed8 (InceptionD): 17x17 -> 8x8."""

  def branches(self, x, conv):
    b7 = conv(192, (7, 1))(conv(192, (1, 7))(conv(192, (1, 1))(x)))
    return [conv(320, (3, 3), strides=(2, 2), padding="VALID")(conv(192, (1, 1))(x)),
            conv(192, (3, 3), strides=(2, 2), padding="VALID")(b7),
            max_pool_3x3_s2(x)]


class Mixed8(InceptionBlock):
  """mixed9-10 (InceptionE), 8x8: branches that end in parallel 1x3 and 3x1 convs."""

  def branches(self, x, conv):
    split = lambda y: [conv(384, (1, 3))(y), conv(384, (3, 1))(y)]
    return [conv(320, (1, 1))(x),
            *split(conv(384, (1, 1))(x)),
            *split(conv(384, (3, 3))(conv(448, (1, 1))(x))),
            conv(192, (1, 1))(avg_pool_3x3(x))]


# (block, args...) for mixed0 ... mixed10.
BLOCKS = ((Mixed35, 32), (Mixed35, 64), (Mixed35, 64), (Reduce35,),
          (Mixed17, 128), (Mixed17, 160), (Mixed17, 160), (Mixed17, 192),
          (Reduce17,), (Mixed8,), (Mixed8,))
AUX_AFTER = "mixed7"


class AuxHead(nn.Module):
  """Auxiliary classifier on the 17x17x768 grid (see the module docstring)."""

  num_classes: int

  @nn.compact
  def __call__(self, x, conv, train: bool):
    window = tuple(min(5, d) for d in x.shape[1:3])
    x = conv(128, (1, 1))(nn.avg_pool(x, window, strides=(3, 3), padding="VALID"))
    x = conv(768, (5, 5), padding="VALID" if min(x.shape[1:3]) >= 5 else "SAME")(x)
    return logits_head(global_mean_pool(x), self.num_classes, 0.0, train)


class InceptionV3(BatchNormClassifier):
  """Inception V3 for NHWC inputs of at least 75x75 (299x299 is standard)."""

  aux_logits: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(
          f"inception_v3 needs inputs of at least {MIN_SIZE}x{MIN_SIZE}, got "
          f"{x.shape[1]}x{x.shape[2]}: resize images to at least {MIN_SIZE}x{MIN_SIZE} "
          f"(299x299 is the standard size) or use a CIFAR-sized model such as "
          f"inception_small.")
    conv = self.conv_module(train)
    x = conv(32, (3, 3), strides=(2, 2), padding="VALID")(x.astype(self.dtype))
    x = conv(64, (3, 3))(conv(32, (3, 3), padding="VALID")(x))
    x = max_pool_3x3_s2(x)
    x = conv(192, (3, 3), padding="VALID")(conv(80, (1, 1), padding="VALID")(x))
    x = max_pool_3x3_s2(x)
    aux = None
    for i, (block, *args) in enumerate(BLOCKS):
      name = f"mixed{i}"
      x = block(*args, name=name)(x, conv)
      if name == AUX_AFTER and self.aux_logits:
        aux = AuxHead(self.num_classes, name="aux")(x, conv, train)
    logits = logits_head(global_mean_pool(x), self.num_classes, self.dropout_rate, train,
                         axis_name=self.axis_name)
    return (logits, aux) if aux is not None and train else logits


def inception_v3(num_classes: int = 1000, **kwargs) -> InceptionV3:
  """Inception V3; pass `aux_logits=True` for the auxiliary classifier."""
  return InceptionV3(num_classes=num_classes, **kwargs)
