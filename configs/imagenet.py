r"""ImageNet, Inception V3, data-parallel over every device (Zhang et al. 2017, Table 2).

Preset keys (comma-separated, big_vision style):

  labels=true|random   true labels or random labels (default true)
  aug                  Inception-style random-resized crop + flip
  dropout              dropout 0.2 before the classifier
  wd                   weight decay 4e-5 (TF-slim's Inception default)
  runlocal             a CPU-sized run: 75x75 images, batch 16, a few steps

Table 2 (one command per row; --config.data_dir=<TFDS data dir with imagenet2012
prepared, or whose manual_dir holds the official archives>):

  python -m rethinking.main --workdir=/ckpt/t2 --config=configs/imagenet.py:labels=true,aug,dropout,wd
  python -m rethinking.main --workdir=/ckpt/t2 --config=configs/imagenet.py:labels=true,aug
  python -m rethinking.main --workdir=/ckpt/t2 --config=configs/imagenet.py:labels=true,wd
  python -m rethinking.main --workdir=/ckpt/t2 --config=configs/imagenet.py:labels=true
  python -m rethinking.main --workdir=/ckpt/t2 --config=configs/imagenet.py:labels=random,dropout,wd
  python -m rethinking.main --workdir=/ckpt/t2 --config=configs/imagenet.py:labels=random,wd
  python -m rethinking.main --workdir=/ckpt/t2 --config=configs/imagenet.py:labels=random

On a CPU, 8 fake devices, a tiny image folder (<dir>/train/<class>/*.JPEG,
<dir>/validation/<class>/*.JPEG):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m rethinking.main \
      --config=configs/imagenet.py:runlocal --config.dataset=<dir> --workdir=/tmp/imagenet_local
"""

import ml_collections
from ml_collections import config_dict

from rethinking.config_args import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The ImageNet config for a preset argument (see the module docstring)."""
  arg = parse_arg(arg, labels="true", aug=False, dropout=False, wd=False, runlocal=False)
  if arg.labels not in ("true", "random"):
    raise ValueError(f"config argument labels={arg.labels!r}: expected 'true' or 'random'")
  config = ml_collections.ConfigDict()
  config.pipeline = "imagenet"  # tf.data input, pmapped over all devices of all hosts.

  config.dataset = "imagenet2012"  # TFDS name, or an ImageFolder directory (train/, validation/).
  config.data_dir = ""  # TFDS data_dir ("" = TFDS default).
  config.num_train = 0  # 0 = all; else only the first n training images (quick checks).
  config.corruption = "random_labels" if arg.labels == "random" else "none"
  config.corrupt_prob = 0.0
  config.augment = "inception" if arg.aug else "none"  # none | inception
  config.image_size = 299

  config.model = "inception_v3"
  # Inception V3's auxiliary classifier: 0 = no aux head; > 0 adds it with this loss weight.
  config.aux_loss_weight = 0.0
  config.weight_decay = 4e-5 if arg.wd else 0.0
  config.dropout_rate = 0.2 if arg.dropout else 0.0
  # BatchNorm statistics over the global batch (True: one synchronous model, the same on
  # any device layout) or over each device's own batch (False: closer to the paper's 50
  # asynchronous workers, each normalizing by its own batch; 8 GPUs x 128 is not 50 x 32).
  config.bn_sync = True
  config.bn_momentum = 0.9997  # TF-slim Inception V3's batch_norm_decay (Keras: 0.99).
  # bfloat16 compute, float32 parameters. None = auto: on for a GPU/TPU, off for a CPU;
  # float32 anywhere: --config.half_precision=False.
  config.half_precision = config_dict.placeholder(bool)

  # Synchronous SGD standing in for the paper's asynchronous RMSProp/SGD on 50 workers.
  config.batch_size = 1024  # Global; split evenly over all devices.
  config.base_batch_size = 256  # Linear scaling: lr = learning_rate * batch_size / 256.
  config.learning_rate = 0.1
  config.lr_decay = 0.94 ** 0.5  # TF-slim Inception: x0.94 every 2 epochs.
  config.momentum = 0.9
  config.num_epochs = 90
  config.stop_at_train_accuracy = 0.0
  config.seed = 0

  config.eval_batch_size = 1024  # Global.
  config.log_every_steps = 100
  # 1, not auto: the pmapped task makes one call per step whatever this says (its
  # Inception V3 steps are long enough); more would only queue steps, and their input
  # batches, further ahead of the device.
  config.steps_per_dispatch = 1
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 2
  config.allow_config_change = False
  config.memory_fraction = 0.0  # Of GPU memory per process; 0 = JAX's default (75%).

  if arg.runlocal:
    config.image_size = 75  # Inception V3's minimum.
    config.batch_size = 16
    config.eval_batch_size = 16
    config.num_epochs = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 0
    config.bn_momentum = 0.99  # Keras' default: the CPU check's few steps, as before.
  return config
