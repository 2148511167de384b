"""Small Inception for CIFAR-10 (Zhang et al. 2017, Figure 3), with and without BatchNorm.

  ConvModule(3x3, 96) -> Inc(32, 32) -> Inc(32, 48) -> Down(80) -> Inc(112, 48)
  -> Inc(96, 64) -> Inc(80, 80) -> Inc(48, 96) -> Down(96) -> Inc(176, 160)
  -> Inc(176, 160) -> global mean pool (7x7 on 28x28 inputs) -> Dense.

Inc(c1, c3) concatenates a 1x1 and a 3x3 ConvModule; Down(c3) concatenates a 3x3
stride-2 ConvModule and a 3x3 stride-2 max-pool. SAME padding throughout, so a 28x28
input reaches 7x7 after the two Downs, as the paper's 7x7 pool requires. 1,649,402
trainable parameters in both variants.
"""

from __future__ import annotations

import flax.linen as nn

from rethinking.models.layers import (
    BatchNormClassifier, InceptionBlock, global_mean_pool, logits_head, max_pool)


class InceptionModule(InceptionBlock):
  """Inc(c1, c3): a 1x1 ConvModule with c1 filters and a 3x3 one with c3 filters."""

  c1: int
  c3: int

  def branches(self, x, conv):
    return [conv(self.c1, (1, 1))(x), conv(self.c3, (3, 3))(x)]


class DownsampleModule(InceptionBlock):
  """Down(c3): a 3x3 stride-2 ConvModule with c3 filters and a 3x3 stride-2 max-pool."""

  c3: int

  def branches(self, x, conv):
    return [conv(self.c3, (3, 3), strides=(2, 2))(x),
            max_pool(x, (3, 3), (2, 2), "SAME")]


# After the first ConvModule(3x3, 96): (block, filters...).
BLOCKS = (
    (InceptionModule, 32, 32), (InceptionModule, 32, 48), (DownsampleModule, 80),
    (InceptionModule, 112, 48), (InceptionModule, 96, 64), (InceptionModule, 80, 80),
    (InceptionModule, 48, 96), (DownsampleModule, 96),
    (InceptionModule, 176, 160), (InceptionModule, 176, 160),
)


class InceptionSmall(BatchNormClassifier):
  """Small Inception; `use_bn=False` is the paper's "Inception w/o BatchNorm"."""

  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    conv = self.conv_module(train, self.use_bn)
    x = conv(96, (3, 3))(x.astype(self.dtype))
    for block, *filters in BLOCKS:
      x = block(*filters)(x, conv)
    return logits_head(global_mean_pool(x), self.num_classes, self.dropout_rate, train,
                       axis_name=self.axis_name)


def inception_small(num_classes: int = 10, **kwargs) -> InceptionSmall:
  """Small Inception with BatchNorm (Conv -> BatchNorm -> ReLU)."""
  return InceptionSmall(num_classes=num_classes, use_bn=True, **kwargs)


def inception_small_nobn(num_classes: int = 10, **kwargs) -> InceptionSmall:
  """Small Inception without BatchNorm (Conv with bias -> ReLU)."""
  return InceptionSmall(num_classes=num_classes, use_bn=False, **kwargs)
