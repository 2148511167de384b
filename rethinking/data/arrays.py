"""In-memory image datasets: a TFDS name or a local `.npz` file, as uint8 numpy arrays.

CIFAR-10 and MNIST fit in host memory, so they are loaded once and kept as uint8;
everything downstream (corruption, batching, preprocessing on the device) works on
these arrays. Both the training code and the kernel/expressivity experiments load
data through `load_arrays`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """Train and test splits: images uint8 [N, H, W, C], labels int32 [N]."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])


def is_local_file(dataset: str) -> bool:
  """A dataset string names a local file when it ends in .npz or exists on disk."""
  return dataset.endswith(".npz") or os.path.isfile(dataset)


def load_arrays(dataset: str, data_dir: str | None = None) -> ArrayDataset:
  """Loads a dataset by TFDS name (e.g. 'cifar10', 'mnist') or from a local .npz file.

  Args:
    dataset: a TFDS name or the path of an `.npz` with x_train, y_train, x_test,
      y_test (the Keras layout; uint8 images HWC or HW, integer labels).
    data_dir: TFDS data_dir (for offline clusters with prepared datasets).

  Returns:
    An `ArrayDataset`; grayscale images get a trailing channel axis.

  Raises:
    ValueError: the file is missing or malformed (names the key, shape or dtype).
  """
  if is_local_file(dataset):
    arrays = _load_npz(dataset)
  else:
    arrays = _load_tfds(dataset, data_dir)
  return _validate(arrays, dataset)


def _load_npz(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise ValueError(f"config.dataset={path!r}: file not found (expected an .npz "
                     f"with keys {', '.join(NPZ_KEYS)}, or a TFDS name such as 'cifar10')")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile.BadZipFile, OSError, pickle refusal, ...
    raise ValueError(f"config.dataset={path!r}: not a readable .npz file ({e})") from e
  missing = [k for k in NPZ_KEYS if k not in arrays]
  if missing:
    raise ValueError(f"config.dataset={path!r}: missing keys {missing}; the file has "
                     f"{sorted(arrays)} and needs {list(NPZ_KEYS)}")
  return {k: arrays[k] for k in NPZ_KEYS}


def _load_tfds(name: str, data_dir: str | None) -> dict[str, np.ndarray]:
  """Reads both splits of a TFDS image dataset into memory.

  Iterates batches rather than `batch_size=-1`, which aborted the process under
  `tfds.testing.mock_data` with TF 2.21 + TFDS 4.9.10.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # TF feeds data; JAX owns the accelerators.
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises DatasetNotFoundError with the list of names.
    raise ValueError(f"config.dataset={name!r}: neither a local .npz file nor a TFDS "
                     f"dataset ({type(e).__name__}: {str(e).splitlines()[0]})") from e
  builder.download_and_prepare()
  arrays = {}
  for split, (xk, yk) in {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}.items():
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(8192)):
      xs.append(x)
      ys.append(y)
    arrays[xk], arrays[yk] = np.concatenate(xs), np.concatenate(ys)
  return arrays


def _validate(arrays: dict[str, np.ndarray], name: str) -> ArrayDataset:
  """Checks dtypes, shapes and label ranges; one error naming what is wrong."""
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.dtype != np.uint8:
      raise ValueError(f"config.dataset={name!r}: x_{split} has dtype {x.dtype}; "
                       "images must be uint8 in [0, 255]")
    if x.ndim == 3:  # grayscale HW -> HWC
      x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"config.dataset={name!r}: x_{split} has shape {x.shape}; "
                       "expected [N, H, W] or [N, H, W, C] with C in (1, 3)")
    y = np.asarray(y).reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
      raise ValueError(f"config.dataset={name!r}: y_{split} has shape {y.shape}; "
                       f"expected [{x.shape[0]}] to match x_{split}")
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"config.dataset={name!r}: y_{split} has dtype {y.dtype}; "
                       "labels must be integers")
    arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y.astype(np.int32)
  if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
    raise ValueError(f"config.dataset={name!r}: train images {arrays['x_train'].shape[1:]} "
                     f"and test images {arrays['x_test'].shape[1:]} differ in shape")
  num_classes = int(arrays["y_train"].max()) + 1
  for split in ("train", "test"):
    y = arrays[f"y_{split}"]
    if y.size and (y.min() < 0 or y.max() >= max(num_classes, 2)):
      raise ValueError(f"config.dataset={name!r}: y_{split} has labels in "
                       f"[{y.min()}, {y.max()}]; expected 0..{num_classes - 1}")
  return ArrayDataset(num_classes=num_classes, name=name, **arrays)


def balanced_subset(labels: np.ndarray, num: int, seed: int) -> np.ndarray:
  """Indices of a fixed, seeded, class-balanced subset of `num` examples.

  Each class gets num // C examples, and the first num % C classes (in a seeded
  order) one more. The indices are returned sorted, so the subset keeps the
  dataset's order and does not depend on how it is later shuffled.

  Raises:
    ValueError: num is larger than the dataset, or a class has too few examples.
  """
  labels = np.asarray(labels)
  if not 0 < num <= labels.shape[0]:
    raise ValueError(f"config.num_train={num}: must be in 1..{labels.shape[0]} "
                     "(the training set's size), or 0 for all")
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  per_class = np.full(len(classes), num // len(classes))
  per_class[rng.permutation(len(classes))[: num % len(classes)]] += 1
  chosen = []
  for c, k in zip(classes, per_class):
    idx = np.flatnonzero(labels == c)
    if k > idx.size:
      raise ValueError(f"config.num_train={num}: class {c} has only {idx.size} examples, "
                       f"a balanced subset needs {k}")
    chosen.append(rng.choice(idx, size=k, replace=False))
  return np.sort(np.concatenate(chosen))
