"""In-memory image datasets: a TFDS name or a local `.npz` file, as uint8 numpy arrays.

CIFAR-10 and MNIST fit in host memory, so they are loaded once and kept as uint8;
everything downstream (corruption, batching, preprocessing on the device) works on
these arrays. Both the training code and the kernel/expressivity experiments load
data through `load_arrays`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import lzma
import os
import socket
import urllib.parse

from absl import logging
import numpy as np

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# Datasets shipped inside the package, by name: they need no download.
# cifar10_sample: 1,000 train (100 per class) and 500 test (50 per class) CIFAR-10 images,
# `balanced_subset(..., seed=0)` of each split of the shared cifar10_10k.npz (JPEG-derived
# pixels, see that file's README), an xz-compressed .npz (3.6 MB; deflate gave 4.3 MB).
PACKAGED = {"cifar10_sample": "cifar10_sample.npz.xz"}

# How long the reachability check of a TFDS download host may take.
_CONNECT_TIMEOUT_S = 5.0


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
    dataset: a name in `PACKAGED` (shipped with the package), a TFDS name or the
      path of an `.npz` with x_train, y_train, x_test,
      y_test (the Keras layout; uint8 images HWC or HW, integer labels).
    data_dir: TFDS data_dir (for offline clusters with prepared datasets).

  Returns:
    An `ArrayDataset`; grayscale images get a trailing channel axis.

  Raises:
    ValueError: the file is missing or malformed (names the key, shape or dtype).
  """
  if dataset in PACKAGED:
    arrays = _load_packaged(dataset)
  elif is_local_file(dataset):
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


def _load_packaged(name: str) -> dict[str, np.ndarray]:
  path = os.path.join(os.path.dirname(__file__), PACKAGED[name])
  with lzma.open(path) as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as npz:
    return {k: npz[k] for k in NPZ_KEYS}


def _ways_out(name: str) -> str:
  return (f"use a local copy (--config.dataset=<file.npz> with keys {', '.join(NPZ_KEYS)}), "
          f"a TFDS data_dir where {name!r} is prepared (--config.data_dir=<dir>), or the "
          "bundled CIFAR-10 sample (--config.dataset=cifar10_sample, or "
          "--config=configs/cifar10.py:quickstart)")


def _unreachable_host(urls) -> str | None:
  """The first download host that cannot be reached within a few seconds, or None.

  TFDS retries a failed download for minutes and then raises a long chained
  traceback; offline, one connection attempt tells the same in milliseconds
  (a DNS failure) to seconds (a dropped connection). Behind a proxy, the proxy
  is what must be reachable.
  """
  proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
  targets = [proxy] if proxy else sorted(urls)
  for url in targets:
    parsed = urllib.parse.urlparse(url if "//" in url else f"//{url}")
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
      socket.create_connection((parsed.hostname, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
      return f"{parsed.hostname}:{port} ({type(e).__name__}: {e})"
  return None


def _remove_empty_dirs(top: str) -> None:
  """Removes `top` and the folders under it if they hold no file (a failed prepare's
  leftovers); a folder with any file in it is kept."""
  for root, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
    try:
      os.rmdir(root)  # Fails (and keeps the folder) unless it is empty.
    except OSError:
      pass


@contextlib.contextmanager
def _tfds_warnings_hidden():
  """Hides TFDS's warnings while it looks for a dataset that is not there yet
  ("Variant folder ... has no dataset_info.json"): the error that follows says more."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _load_tfds(name: str, data_dir: str | None) -> dict[str, np.ndarray]:
  """Reads both splits of a TFDS image dataset into memory.

  A dataset TFDS has not prepared yet is downloaded first; where its download
  host cannot be reached that is one error, within seconds, naming the ways out.
  Iterates batches rather than `batch_size=-1`, which aborted the process under
  `tfds.testing.mock_data` with TF 2.21 + TFDS 4.9.10.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # TF feeds data; JAX owns the accelerators.
  try:
    with _tfds_warnings_hidden():
      builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises DatasetNotFoundError with the list of names.
    raise ValueError(f"config.dataset={name!r}: neither a local .npz file nor a TFDS "
                     f"dataset ({type(e).__name__}: {str(e).splitlines()[0]})") from e
  with _tfds_warnings_hidden():
    prepared = builder.is_prepared()
  if not prepared:
    where = os.path.dirname(os.path.dirname(builder.data_dir))  # <data_dir>/<name>/<version>
    unreachable = _unreachable_host(getattr(builder, "url_infos", None) or {})
    if unreachable:
      raise ValueError(f"config.dataset={name!r}: not prepared under {where} and its download "
                       f"host is unreachable: {unreachable}; {_ways_out(name)}")
    existed = os.path.isdir(where)
    try:
      builder.download_and_prepare()
    except Exception as e:  # Network errors, a missing manual archive, a full disk, ...
      if not existed:
        _remove_empty_dirs(where)
      raise ValueError(f"config.dataset={name!r}: TFDS could not download and prepare it "
                       f"under {where} ({type(e).__name__}: {_first_line(e)}); "
                       f"{_ways_out(name)}") from e
  arrays = {}
  for split, (xk, yk) in {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}.items():
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(8192)):
      xs.append(x)
      ys.append(y)
    arrays[xk], arrays[yk] = np.concatenate(xs), np.concatenate(ys)
  return arrays


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [""])[0]


def _validate(arrays: dict[str, np.ndarray], name: str) -> ArrayDataset:
  """Checks dtypes, shapes and label ranges; one error naming what is wrong."""
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.size == 0 or y.size == 0:
      raise ValueError(f"config.dataset={name!r}: x_{split} {x.shape} / y_{split} {y.shape} "
                       "hold no examples; both splits need at least one image and label")
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
  if len(np.unique(arrays["y_train"])) < 2:
    raise ValueError(f"config.dataset={name!r}: y_train has a single class "
                     f"({arrays['y_train'][0]}); classification needs at least 2")
  for split in ("train", "test"):
    y = arrays[f"y_{split}"]
    if y.size and (y.min() < 0 or y.max() >= max(num_classes, 2)):
      raise ValueError(f"config.dataset={name!r}: y_{split} has labels in "
                       f"[{y.min()}, {y.max()}]; expected 0..{num_classes - 1}")
  return ArrayDataset(num_classes=num_classes, name=name, **arrays)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] integers: how much of input pixel j output pixel i covers, in units of
  1/n_out of a pixel (output pixel i spans [i * n_in, (i + 1) * n_in) in those units, so
  every row sums to n_in)."""
  start, pixel = np.arange(n_out)[:, None] * n_in, np.arange(n_in)[None, :] * n_out
  overlap = np.minimum(start + n_in, pixel + n_out) - np.maximum(start, pixel)
  return np.clip(overlap, 0, None).astype(np.int64)


def downscale(ds: ArrayDataset, size: int) -> ArrayDataset:
  """Both splits' images shrunk to size x size by area, still uint8: each output pixel is
  the mean of the input area it covers (32 -> 16: 2x2 means; 32 -> 12: 8/3-pixel squares),
  rounded half up. In integers, so every CPU gives the same images (and fingerprint).

  A smaller image that still shows the whole picture, where a center crop of the
  same size would cut most of it away: how small CPU-scale runs keep the conv nets
  cheap. Done once, on the host, before any corruption.
  """

  def resize(x: np.ndarray) -> np.ndarray:
    _, h, w, _ = x.shape
    if h < size or w < size:
      raise ValueError(f"config.resize={size} is not allowed: larger than the {h}x{w} "
                       f"images of {ds.name!r}")
    rows = np.einsum("ih,nhwc->niwc", _area_weights(h, size), x.astype(np.int64))
    total = np.einsum("niwc,jw->nijc", rows, _area_weights(w, size))
    return ((2 * total + h * w) // (2 * h * w)).astype(np.uint8)  # round(total / (h * w))

  return dataclasses.replace(ds, x_train=resize(ds.x_train), x_test=resize(ds.x_test))


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
