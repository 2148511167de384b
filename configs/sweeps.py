r"""The paper's experiments as sweeps: lists of runs of configs/cifar10.py and configs/imagenet.py.

`get_sweep(name, scale)` returns the runs of a sweep, each a dict:
  name       readable and derived from the preset and overrides, so a run shared by two
             sweeps (Table 1's Inception on true labels is also in Figures 1a and 2) has
             one workdir, <root>/<config file stem>/<name>/seed<k>, and trains once
  config     the config file, relative to the repo root
  arg        its preset argument (`--config=<config>:<arg>`)
  overrides  config fields set on top (`--config.<field>=<value>`)
Commands (run from the repo root):

  python -m rethinking.sweep --sweep=table1 --root=/data/rethinking          # a GPU, paper scale
  python -m rethinking.sweep --sweep=figure1bc --root=/data/rethinking --seeds=3
  python -m rethinking.sweep --sweep=figure1bc --root=/tmp/f1bc --scale=runlocal \
      --dataset=../shared/data/cifar10_10k.npz                               # this CPU
  python -m rethinking.report --root=/data/rethinking --out=/data/rethinking/report

`runlocal` shrinks every CIFAR run (data, image size, epochs; see RUNLOCAL) so the whole
pipeline runs on a 2-core CPU; its numbers show the shape of a result, not its values.
`cpu` (figure1a and figure1bc) sizes the runs so that the figures' effects show on the
shared 10,000-image CIFAR-10 subset within a few hours of a 2-core CPU (see CPU).
"""

CIFAR = "configs/cifar10.py"
# Written alongside issue 3 (ImageNet); its Table 2 presets are assumed below.
IMAGENET = "configs/imagenet.py"

TABLE1 = (  # One run per row of Table 1, in the paper's order.
    "model=inception_small,crop,wd",
    "model=inception_small,crop",
    "model=inception_small,wd",
    "model=inception_small",
    "model=inception_small,corruption=random_labels",
    "model=inception_small_nobn,wd",
    "model=inception_small_nobn",
    "model=inception_small_nobn,corruption=random_labels",
    "model=alexnet_small,crop,wd",
    "model=alexnet_small,crop",
    "model=alexnet_small,wd",
    "model=alexnet_small",
    "model=alexnet_small,corruption=random_labels",
    "model=mlp_3x512,wd",
    "model=mlp_3x512",
    "model=mlp_3x512,corruption=random_labels",
    "model=mlp_1x512,wd",
    "model=mlp_1x512",
    "model=mlp_1x512,corruption=random_labels",
)


def _figure1a(model: str) -> tuple[str, ...]:
  return tuple(f"model={model},corruption={c}" for c in (
      "none", "random_labels", "shuffled_pixels", "random_pixels", "gaussian_pixels"))


FIGURE1A = _figure1a("inception_small")
FIGURE1BC_MODELS = ("mlp_1x512", "alexnet_small", "inception_small")  # Cheap ones first.
FIGURE2 = ("model=inception_small", "model=inception_small_nobn")
TABLE4 = (  # Appendix E: random labels with explicit regularizers.
    "model=inception_small,corruption=random_labels,wd",
    "model=alexnet_small,corruption=random_labels,wd",
    "model=mlp_3x512,corruption=random_labels,wd",
    "model=mlp_1x512,corruption=random_labels,wd",
    "model=inception_small,corruption=random_labels,crop",
)

# --- Table 2 (ImageNet) -------------------------------------------------------------
# Presets of configs/imagenet.py (issue 3), one per Table 2 row: labels=true|random and
# the flags aug, dropout, wd. If that file names them differently, change only this.
TABLE2 = (
    "labels=true,aug,dropout,wd",
    "labels=true,aug",
    "labels=true,wd",
    "labels=true",
    "labels=random,dropout,wd",
    "labels=random,wd",
    "labels=random",
)
# ------------------------------------------------------------------------------------

# runlocal, per model: what a 2-core CPU gets through (figure1bc: 15 runs, 18 minutes).
# Center crops of 12 or 8 pixels keep the convolutional nets cheap. Epochs are a cap:
# with `fit` a run stops at 100% train accuracy well before it.
RUNLOCAL = {
    "mlp_1x512": dict(num_train=10_000, num_test=500, batch_size=128, num_epochs=100),
    # No BatchNorm, dropout or augmentation: the running train accuracy is the eval-mode
    # one, so the extra pass over the training set each epoch is skipped.
    "alexnet_small": dict(num_train=200, num_test=200, batch_size=50, image_size=12,
                          num_epochs=100, eval_train=False),
    # A few dozen steps leave BatchNorm's running statistics (momentum 0.99) far from the
    # data, so eval-mode accuracy is chance: fit on the train-mode running accuracy, and
    # read Inception's runlocal test error as untrained.
    "inception_small": dict(num_train=50, num_test=100, batch_size=25, image_size=8,
                            num_epochs=40, eval_train=False),
}
RUNLOCAL["mlp_3x512"] = RUNLOCAL["mlp_1x512"]
RUNLOCAL["inception_small_nobn"] = RUNLOCAL["inception_small"]
# Figure 1b/1c at runlocal: every other corruption level; Inception (1-2 minutes of
# compilation a run on 2 cores) only at the ends and the middle.
RUNLOCAL_LEVELS = {"mlp_1x512": (0, 2, 4, 6, 8, 10), "alexnet_small": (0, 2, 4, 6, 8, 10),
                   "inception_small": (0, 5, 10)}
PAPER_NUM_TRAIN = 50_000  # CIFAR-10

# cpu: runs sized so the figures' effects show on ../shared/data/cifar10_10k.npz on a
# 2-core CPU. Measured there (epochs until the eval-mode train accuracy reached 50/90/99/100%,
# true labels -> random labels; test accuracy true / random):
#   mlp_1x512, 10,000 images, 28 px:        2/9/15/23 -> 6/15/21/29, test 0.44 / 0.10
#   alexnet_small, 5,000 images, 16 px -> 14 px crops:
#                                           7/26/33/36 -> 30/48/54/63, test 0.50 / 0.09
#   inception_small, 5,000 images, 12 px, BN momentum 0.9:
#                                           4/11/19/21 -> 12/17/21/29, test 0.55 / 0.10
#   (inception_small, 2,000 images, 16 -> 14 px: 12/17/21/22 -> 15/18/20/22)
# At these sizes the last few examples dominate the time to 99-100% (Inception memorizes
# 5,000 random labels nearly as fast as true ones), so Figure 1b at this scale reads time
# to fit at 90% (`rethinking.report --fit_threshold=0.9`: 1.7x, 1.8x and 1.5x at p = 1)
# and shows the 100% points beside it. Images are downscaled (`resize`), not cropped:
# the whole picture at fewer pixels. BatchNorm statistics follow the few steps per epoch
# (momentum 0.9), else Inception's eval-mode accuracy lags the fit by epochs.
# Figure 1a (steps until the epoch's running loss < 0.01) at this scale runs on two models.
# inception_small (the paper's) needs all 10,000 images at 12 px (n/d ~ 23, the paper's
# 50,000 / 2,352 ~ 21) for true labels to fit first; smaller, it memorizes everything alike:
#   2,000 images, 12 px: true labels slowest of all five (0.34k steps);
#   5,000 images: true labels 840 steps, random labels 880;
#   10,000 images (measured, 2026-12-03): true 1.42k < Gaussian 1.58k < shuffled 1.66k <
#     random pixels 2.21k = random labels 2.21k (same epoch; random labels' loss is the
#     highest of the five at every epoch end), ~40 minutes for the five.
# mlp_1x512 (all 10,000 images, at most 80 epochs, ~4 minutes for the five) beside it: all
# five reach 0.01 with random labels last, but noise images are memorized first (true labels
# generalize to 44% here, the paper's to 86%), and for an MLP shuffled pixels are true
# labels with the inputs reindexed (the same distribution of trajectories), so those tie.
# alexnet_small, 5,000 images, 16 px: true 1,480, random labels 2,400, shuffled pixels not in
# 80 epochs, random and Gaussian pixels stuck at loss ln 10 (no BatchNorm: the net collapses
# to a constant output in the first epoch at learning rate 0.01).
CPU = {
    "mlp_1x512": dict(num_train=10_000, num_test=2_000, num_epochs=150),
    "alexnet_small": dict(num_train=5_000, num_test=2_000, resize=16, image_size=14,
                          num_epochs=120),
    "inception_small": dict(num_train=5_000, num_test=2_000, resize=12, image_size=12,
                            bn_momentum=0.9, num_epochs=80),
}
# Figure 1a runs stop once the epoch's running loss is below the figure's 0.01.
CPU_FIGURE1A = {
    "mlp_1x512": dict(CPU["mlp_1x512"], num_epochs=80, stop_at_train_loss=0.01),
    "inception_small": dict(CPU["inception_small"], num_train=10_000, num_epochs=100,
                            eval_train=False, stop_at_train_loss=0.01),
}
CPU_LEVELS = (0, 2, 4, 6, 8, 10)  # Tenths of p: every other level of the paper's eleven.
# Figure 1b's time to fit is read at this train accuracy (`rethinking.report
# --fit_threshold`; `rethinking.sweep --report` uses it): 90% at cpu scale (above), the
# report's default (rethinking.paper.FIT_THRESHOLD) at the other scales.
FIT_THRESHOLDS = {"cpu": 0.9}


def run_name(arg: str, overrides: dict) -> str:
  """'model=alexnet_small,p=0.3,fit' -> 'alexnet_small-p0.3-fit'; defaults are left out."""
  parts = []
  for key, value in [item.partition("=")[::2] for item in arg.split(",")] + [
      (k, str(v)) for k, v in overrides.items()]:
    if key in ("model", "corruption"):
      parts += [value] if value != "none" else []
    else:
      parts.append(key + ("_" if value[:1].isalpha() else "") + value)
  return "-".join(parts)


def _runs(config: str, args, **overrides) -> list[dict]:
  return [{"name": run_name(arg, overrides), "config": config, "arg": arg,
           "overrides": dict(overrides)} for arg in args]


def _figure1bc(scale: str) -> list[dict]:
  """Label corruption p = 0.0, 0.1, ..., 1.0 (tenths), each run stopping at 100% train accuracy."""
  levels = {"runlocal": RUNLOCAL_LEVELS, "cpu": {m: CPU_LEVELS for m in FIGURE1BC_MODELS}}
  return _runs(CIFAR, [f"model={m},p={p / 10:.1f},fit" for m in FIGURE1BC_MODELS
                       for p in levels.get(scale, {}).get(m, range(11))])


SWEEPS = {  # name -> scale -> runs (at paper scale; `runlocal` then shrinks each).
    "table1": lambda scale: _runs(CIFAR, TABLE1),
    "figure1a": lambda scale: _runs(CIFAR, [a for m in CPU_FIGURE1A for a in _figure1a(m)]
                                    if scale == "cpu" else FIGURE1A),
    "figure1bc": _figure1bc,
    "figure2": lambda scale: _runs(CIFAR, FIGURE2),
    "table2": lambda scale: _runs(IMAGENET, TABLE2),
    # Full augmentation needs a slower learning-rate decay and longer training (Appendix E).
    "table4": lambda scale: _runs(CIFAR, TABLE4) + _runs(
        CIFAR, ["model=inception_small,corruption=random_labels,augment=full"], lr_decay=0.999),
}


def _model(arg: str) -> str:
  items = dict(item.partition("=")[::2] for item in arg.split(","))
  return items.get("model", "inception_small")


def _shrunk(overrides: dict, shrink: dict) -> dict:
  """`overrides` with the smaller run's fields, and the paper's learning-rate decay per
  training example seen, not per (much shorter) epoch: decayed per epoch, the rate dies
  before the last few examples are fit."""
  decay = overrides.get("lr_decay", 0.95) ** (shrink["num_train"] / PAPER_NUM_TRAIN)
  return {**overrides, **shrink, "lr_decay": round(decay, 6)}


def runlocal(run: dict) -> dict:
  """The run shrunk for a CPU (same name): its config's `runlocal` preset, plus RUNLOCAL."""
  run = dict(run, arg=f"{run['arg']},runlocal")
  if run["config"] == CIFAR:
    shrink = RUNLOCAL[_model(run["arg"])]
    run["overrides"] = _shrunk(run["overrides"], shrink)
  return run


def cpu(run: dict, sweep: str) -> dict:
  """The run at CPU scale (same name): the sizes of CPU (CPU_FIGURE1A for Figure 1a), and
  the paper's learning-rate decay per training example seen (as for runlocal)."""
  shrink = (CPU_FIGURE1A if sweep == "figure1a" else CPU)[_model(run["arg"])]
  return dict(run, overrides=_shrunk(run["overrides"], shrink))


SCALES = {"paper": lambda run, sweep: run, "runlocal": lambda run, sweep: runlocal(run),
          "cpu": cpu}
CPU_SWEEPS = ("figure1a", "figure1bc")  # The figures the cpu scale is sized for.


def get_sweep(name: str, scale: str = "paper") -> list[dict]:
  """The runs of sweep `name` at `scale` ('paper', 'runlocal' or 'cpu')."""
  if name not in SWEEPS:
    raise ValueError(f"unknown sweep {name!r}; known: {', '.join(SWEEPS)}")
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
  if scale == "cpu" and name not in CPU_SWEEPS:
    raise ValueError(f"--scale=cpu is sized for {', '.join(CPU_SWEEPS)}, not {name!r}; "
                     "use --scale=runlocal")
  return [SCALES[scale](r, name) for r in SWEEPS[name](scale)]
