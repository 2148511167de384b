r"""CIFAR-10 randomization tests (Zhang et al. 2017, Section 2, Table 1, Figures 1-2).

`get_config(arg)` takes big_vision-style comma-separated presets; every field can
still be overridden with `--config.<field>=...`. Preset keys:

  model=<name>       inception_small | inception_small_nobn | alexnet_small |
                     mlp_1x512 | mlp_3x512 (default inception_small)
  corruption=<name>  none | partial_labels | random_labels | shuffled_pixels |
                     random_pixels | gaussian_pixels (default none)
  p=<float>          label corruption probability (implies partial_labels)
  crop               random 28x28 crop (Table 1 "random crop"); `augment=<name>` for others
  wd                 weight decay on (Table 1 "weight decay", coefficient 5e-4)
  fit                stop at 100% train accuracy (Figure 1b, time to overfit)
  runlocal           a tiny run for a CPU: 1,000 training images, few epochs
  quickstart         the README's first command, offline: the bundled CIFAR-10 sample
                     (1,000 train / 500 test images), mlp_1x512 and random labels by
                     default, trained until it fits (100% train accuracy); under a
                     minute on 2 CPU cores. Combines with model= and corruption=.

Quickstart (the paper's headline on a CPU, no download):

  python -m rethinking.main --workdir=/tmp/qs --config=configs/cifar10.py:quickstart
  python -m rethinking.main --workdir=/tmp/qs_true --config=configs/cifar10.py:quickstart,corruption=none

Table 1 (one command per row; add --config.dataset=<path.npz> for a local copy):

  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=inception_small,crop,wd
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=inception_small,crop
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=inception_small,wd
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=inception_small
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=inception_small,corruption=random_labels
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=inception_small_nobn,wd
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=inception_small_nobn
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=inception_small_nobn,corruption=random_labels
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=alexnet_small,crop,wd
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=alexnet_small,crop
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=alexnet_small,wd
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=alexnet_small
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=alexnet_small,corruption=random_labels
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=mlp_3x512,wd
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=mlp_3x512
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=mlp_3x512,corruption=random_labels
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=mlp_1x512,wd
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=mlp_1x512
  python -m rethinking.main --workdir=/tmp/t1 --config=configs/cifar10.py:model=mlp_1x512,corruption=random_labels

Figure 1a (Inception, training loss against steps):

  python -m rethinking.main --workdir=/tmp/f1a --config=configs/cifar10.py:corruption=none
  python -m rethinking.main --workdir=/tmp/f1a --config=configs/cifar10.py:corruption=random_labels
  python -m rethinking.main --workdir=/tmp/f1a --config=configs/cifar10.py:corruption=shuffled_pixels
  python -m rethinking.main --workdir=/tmp/f1a --config=configs/cifar10.py:corruption=random_pixels
  python -m rethinking.main --workdir=/tmp/f1a --config=configs/cifar10.py:corruption=gaussian_pixels

Figure 1b/1c (label corruption p = 0.0, 0.1, ..., 1.0; model inception_small,
alexnet_small or mlp_1x512; stops at 100% train accuracy):

  python -m rethinking.main --workdir=/tmp/f1b --config=configs/cifar10.py:model=alexnet_small,p=0.3,fit

Figure 2b (Inception with and without BatchNorm; best test accuracy = early stopping):

  python -m rethinking.main --workdir=/tmp/f2 --config=configs/cifar10.py:model=inception_small
  python -m rethinking.main --workdir=/tmp/f2 --config=configs/cifar10.py:model=inception_small_nobn

Appendix E / Table 4 (random labels with regularizers):

  python -m rethinking.main --workdir=/tmp/t4 --config=configs/cifar10.py:corruption=random_labels,wd
  python -m rethinking.main --workdir=/tmp/t4 --config=configs/cifar10.py:corruption=random_labels,crop
  python -m rethinking.main --workdir=/tmp/t4 --config=configs/cifar10.py:corruption=random_labels,augment=full --config.lr_decay=0.999
"""

import ml_collections
from ml_collections import config_dict

from rethinking.config_args import parse_arg

MODELS = ("inception_small", "inception_small_nobn", "alexnet_small", "mlp_1x512", "mlp_3x512")
# Not stated in the paper; 5e-4 is the usual CIFAR coefficient for these nets.
WEIGHT_DECAY = 5e-4
# Not stated in the paper either; long enough for every model to fit random labels.
NUM_EPOCHS = {"inception_small": 60, "inception_small_nobn": 60, "alexnet_small": 100,
              "mlp_1x512": 100, "mlp_3x512": 100}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The CIFAR-10 config for a preset argument (see the module docstring)."""
  arg = parse_arg(arg, model="", corruption="", p=-1.0, crop=False, augment="none",
                  wd=False, fit=False, runlocal=False, quickstart=False)
  # Unset model/corruption default to the paper's Inception on true labels, or, for the
  # quickstart, to the run that shows the headline fastest on a CPU.
  arg.model = arg.model or ("mlp_1x512" if arg.quickstart else "inception_small")
  arg.corruption = arg.corruption or ("random_labels" if arg.quickstart else "none")
  config = ml_collections.ConfigDict()

  # Data and randomization test.
  config.dataset = "cifar10"  # A TFDS name, a local .npz (Keras layout) or "cifar10_sample".
  config.data_dir = ""  # TFDS data_dir ("" = TFDS default); for offline clusters.
  config.num_train = 0  # 0 = all; otherwise a fixed, seeded, class-balanced subset.
  config.num_test = 0  # 0 = all; otherwise a class-balanced test subset.
  config.corruption = "partial_labels" if arg.p >= 0 else arg.corruption
  # p=<float> is partial_labels at p; `corruption=partial_labels` without p is -1, which
  # validation refuses ("needs its probability") rather than train at p = 0.
  config.corrupt_prob = arg.p if arg.p >= 0 else (
      -1.0 if arg.corruption == "partial_labels" else 0.0)
  config.corrupt_force_different = False  # True: a corrupted label never equals the true one.
  config.resize = 0  # 0 = as stored; else images downscaled to resize x resize first (CPU scale).
  config.image_size = 28  # Center crop (eval) or random crop (augment) from 32x32.
  config.augment = "crop" if arg.crop else arg.augment  # none | crop | crop_flip | full
  config.rotation_degrees = 25.0  # Appendix E: rotation up to 25 degrees with augment=full.

  # Model and regularizers.
  config.model = arg.model
  config.weight_decay = WEIGHT_DECAY if arg.wd else 0.0
  config.dropout_rate = 0.0
  config.bn_momentum = 0.99  # Running-average decay of BatchNorm statistics (TF's default).
  # bfloat16 compute, float32 parameters. None = auto: on for a GPU/TPU, off for a CPU
  # (rethinking/backend_defaults.py); float32 anywhere: --config.half_precision=False.
  config.half_precision = config_dict.placeholder(bool)

  # Optimization (Appendix A).
  config.batch_size = 128
  config.learning_rate = 0.1 if arg.model.startswith("inception") else 0.01
  config.lr_decay = 0.95  # Multiplied every epoch.
  config.momentum = 0.9
  config.num_epochs = NUM_EPOCHS.get(arg.model, 100)
  config.stop_at_train_accuracy = 1.0 if arg.fit else 0.0  # 0 = off.
  # Stop once an epoch's running train loss is below this (Figure 1a's 0.01); 0 = off.
  config.stop_at_train_loss = 0.0
  config.seed = 0  # Initialization, data order, dropout and augmentation.
  config.data_seed = -1  # The subsets and the corruption; -1 = the same as seed.

  # Evaluation, logging and checkpoints.
  config.eval_batch_size = 1000
  config.eval_train = True  # A full eval-mode pass over the training set (train_eval_*).
  # That pass every k epochs and at the last; every epoch for a run with
  # stop_at_train_accuracy (its fit check reads it, see loop.evaluates_train_set).
  config.eval_train_every_epochs = 1
  config.log_every_steps = 50  # Host syncs for the progress bar; nothing per step.
  # Train steps fused into one device call; 0 = auto: 1 on a CPU, 16 on a GPU/TPU.
  config.steps_per_dispatch = 0
  config.checkpoint_every_steps = 0  # 0 = once per epoch only.
  config.keep_checkpoints = 2  # The latest N; the best by test accuracy is kept too.
  config.allow_config_change = False  # True: resume a workdir despite changed identity fields.
  # The share of GPU memory this process takes (XLA_PYTHON_CLIENT_MEM_FRACTION, applied by
  # rethinking.main); 0 = JAX's default (75%). E.g. 0.2 for several small runs on one GPU.
  config.memory_fraction = 0.0

  if arg.runlocal:
    config.num_train = 1000
    config.num_test = 1000
    config.num_epochs = 3
    config.eval_batch_size = 500
  if arg.quickstart:
    config.dataset = "cifar10_sample"  # Shipped with the package: no download.
    config.num_epochs = 40  # mlp_1x512 fits the 1,000 random labels at epoch ~14.
    config.stop_at_train_accuracy = 1.0
    config.eval_batch_size = 500
  return config
