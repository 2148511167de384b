"""Up-front checks of a config and its data: one clear error before any compute.

Each error names the field, the value and what is allowed, and is raised before
the workdir is written, so nothing already on disk is touched.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from rethinking import backend_defaults
from rethinking.data import arrays
from rethinking.data import corruptions
from rethinking.data import preprocess
from rethinking.models import MODELS

MIN_INCEPTION_V3_SIZE = 75


def _fail(field: str, value, allowed: str):
  raise ValueError(f"config.{field}={value!r} is not allowed: {allowed}")


def _one_of(config, field: str, choices) -> None:
  if config[field] not in choices:
    _fail(field, config[field], f"expected one of {', '.join(choices)}")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks every field that can be checked without loading data."""
  _one_of(config, "model", sorted(MODELS))
  if config.get("pipeline", "in_memory") == "imagenet":
    _one_of(config, "corruption", ("none",) + corruptions.LABEL_CORRUPTIONS)
    _one_of(config, "augment", ("none", "inception"))
    if config.model == "inception_v3" and config.image_size < MIN_INCEPTION_V3_SIZE:
      _fail("image_size", config.image_size, f"Inception V3 needs at least "
            f"{MIN_INCEPTION_V3_SIZE}x{MIN_INCEPTION_V3_SIZE} inputs (299 is standard); raise "
            "config.image_size or use a smaller model")
  else:
    _one_of(config, "corruption", corruptions.CORRUPTIONS)
    _one_of(config, "augment", preprocess.AUGMENTATIONS)
  # Numbers first: NaN passes every comparison below (nan < 0 is False) and inf
  # passes "> 0", so finiteness is checked for every number of the config.
  for field, value in config.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if not math.isfinite(value):
      _fail(field, value, "expected a finite number")
  if config.corruption == "partial_labels" and config.corrupt_prob < 0:
    # A negative corrupt_prob is the config files' "not given" for partial_labels
    # (p = 0 is a real setting: Figure 1b's baseline).
    _fail("corrupt_prob", config.corrupt_prob, "corruption=partial_labels needs its "
          "probability: the preset p=<0..1> or --config.corrupt_prob=<0..1>")
  if not 0.0 <= config.corrupt_prob <= 1.0:
    _fail("corrupt_prob", config.corrupt_prob, "expected a probability in [0, 1]")
  if config.corruption != "partial_labels" and config.corrupt_prob != 0:
    _fail("corrupt_prob", config.corrupt_prob, f"only corruption=partial_labels reads it "
          f"(corruption={config.corruption!r}); leave it 0 or use corruption=partial_labels")
  for field in ("num_epochs", "batch_size", "eval_batch_size", "log_every_steps",
                "keep_checkpoints", "image_size", "eval_train_every_epochs"):
    if config.get(field, 1) <= 0:
      _fail(field, config[field], "expected a positive integer")
  if config.get("steps_per_dispatch", 0) < 0:
    _fail("steps_per_dispatch", config.steps_per_dispatch,
          "expected a positive integer, or 0 for the backend's default (1 on a CPU, "
          f"{backend_defaults.FUSED_STEPS} on a GPU/TPU)")
  if not (config.get("memory_fraction", 0) == 0 or 0 < config.memory_fraction <= 1):
    _fail("memory_fraction", config.memory_fraction,
          "expected a fraction of GPU memory in (0, 1], or 0 for JAX's default (0.75)")
  for field in ("num_train", "num_test", "checkpoint_every_steps"):
    if config.get(field, 0) < 0:
      _fail(field, config[field], "expected 0 (all / off) or a positive integer")
  for field in ("learning_rate",):
    if not config[field] > 0:
      _fail(field, config[field], "expected a positive number")
  if not 0 < config.lr_decay <= 1:
    _fail("lr_decay", config.lr_decay, "expected a factor in (0, 1]")
  if not 0 <= config.momentum < 1:
    _fail("momentum", config.momentum, "expected a value in [0, 1)")
  if config.weight_decay < 0:
    _fail("weight_decay", config.weight_decay, "expected >= 0")
  if not 0 <= config.dropout_rate < 1:
    _fail("dropout_rate", config.dropout_rate, "expected a rate in [0, 1)")
  if not 0 <= config.get("bn_momentum", 0.5) < 1:
    _fail("bn_momentum", config.bn_momentum, "expected a decay in [0, 1)")
  if config.get("rotation_degrees", 0) < 0:
    _fail("rotation_degrees", config.rotation_degrees, "expected >= 0")
  if config.get("aux_loss_weight", 0) < 0:
    _fail("aux_loss_weight", config.aux_loss_weight, "expected 0 (off) or a positive weight")
  if config.get("base_batch_size", 1) <= 0:
    _fail("base_batch_size", config.base_batch_size, "expected a positive integer")
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
    _fail("seed", config.seed, "expected a non-negative integer")
  if not 0 <= config.stop_at_train_accuracy <= 1:
    _fail("stop_at_train_accuracy", config.stop_at_train_accuracy,
          "expected 0 (off) or an accuracy in (0, 1]")
  if not 0 <= config.get("stop_at_train_loss", 0) < math.inf:
    _fail("stop_at_train_loss", config.stop_at_train_loss,
          "expected 0 (off) or a positive loss")


def check_data(config: ml_collections.ConfigDict, ds: arrays.ArrayDataset) -> None:
  """Checks the config against the loaded (and subset) data."""
  num_train, height, width = ds.x_train.shape[:3]
  classes = np.unique(ds.y_train)
  if classes.size < 2:
    _fail("dataset", config.dataset, f"its training labels hold {classes.size} class(es) "
          f"({classes.tolist()}); classification needs at least 2")
  if config.batch_size > num_train:
    _fail("batch_size", config.batch_size,
          f"larger than the {num_train} training examples of {config.dataset!r}")
  if config.image_size > min(height, width):
    _fail("image_size", config.image_size,
          f"larger than the {height}x{width} images of {config.dataset!r}")
