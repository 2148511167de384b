"""The model zoo: every architecture of the paper, looked up by name.

All models share one interface (the training code relies on it):
  * `get_model(name, num_classes, **kwargs)` returns a `flax.linen.Module` with fields
    `num_classes`, `dropout_rate` (dropout right before the final Dense, train mode
    only), `dtype` (compute dtype; parameters stay float32) and `axis_name` (the pmap
    axis of a data-parallel step: dropout masks are keyed by each example's index in
    the global batch along it, and BatchNorm averages its statistics over it; None
    outside such a map); models with BatchNorm also have `bn_momentum` and `bn_sync`
    (False: statistics over each device's own batch).
  * `module.apply(variables, x, train=..., rngs={'dropout': key},
    mutable=['batch_stats'])`, with `mutable` only for models with BatchNorm in train
    mode; x is float NHWC, already preprocessed. Logits are float32.
  * Only models with BatchNorm have a 'batch_stats' collection. BatchNorm: momentum
    0.99 (Keras semantics), epsilon 1e-3, offset but no scale.
  * `inception_v3` with `aux_logits=True` returns `(logits, aux_logits)` in train mode
    and `logits` in eval mode.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from rethinking.models.alexnet_small import alexnet_small
from rethinking.models.inception_small import inception_small, inception_small_nobn
from rethinking.models.inception_v3 import inception_v3
from rethinking.models.mlp import mlp_1x512, mlp_3x512

MODELS: dict[str, Callable[..., nn.Module]] = {
    "alexnet_small": alexnet_small,
    "inception_small": inception_small,
    "inception_small_nobn": inception_small_nobn,
    "inception_v3": inception_v3,
    "mlp_1x512": mlp_1x512,
    "mlp_3x512": mlp_3x512,
}

# Options that only mean something to a model with BatchNorm.
BATCH_NORM_OPTIONS = ("bn_momentum", "bn_sync")
MODELS_WITHOUT_BATCH_NORM = ("alexnet_small", "inception_small_nobn", "mlp_1x512", "mlp_3x512")


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
  """Builds the model registered as `name`.

  Args:
    name: a key of `MODELS`.
    num_classes: size of the logits.
    **kwargs: module fields (`dropout_rate`, `dtype`, `axis_name`, `bn_momentum`,
      `bn_sync`, `aux_logits` for inception_v3). `bn_momentum` and `bn_sync` are
      dropped for models without BatchNorm, so one call can build any model of the zoo.

  Returns:
    The unbound flax module.

  Raises:
    ValueError: `name` is not registered.
  """
  if name not in MODELS:
    raise ValueError(f"config.model={name!r}: unknown model; known: {', '.join(sorted(MODELS))}")
  if name in MODELS_WITHOUT_BATCH_NORM:
    kwargs = {k: v for k, v in kwargs.items() if k not in BATCH_NORM_OPTIONS}
  return MODELS[name](num_classes=num_classes, **kwargs)
