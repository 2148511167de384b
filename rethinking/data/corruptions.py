"""Randomization tests of Zhang et al. (2017), Section 2.1, as seeded numpy transforms.

Each corruption is applied once, on the host, before training: the corrupted labels
and pixels are a pure function of (data, corruption, corrupt_prob, seed), so they
stay fixed across epochs and are rebuilt identically after a restart. Every
corruption draws from its own stream, `SeedSequence([seed, tag...])`, so changing
one never shifts another's randomness.

  none             the data unchanged.
  partial_labels   each training label, independently with probability p, replaced by
                   a uniform random class (which may be the true one, as in the paper).
  random_labels    partial_labels with p = 1.
  shuffled_pixels  one permutation of pixel positions for every train and test image.
  random_pixels    an independent permutation of pixel positions per image.
  gaussian_pixels  i.i.d. Gaussian pixels with the training set's per-channel mean and
                   variance, for train and test images.

Label corruptions leave the test set clean; pixel corruptions are applied to the test
images too (the paper does), and all keep the clean labels.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from rethinking.data.arrays import ArrayDataset

CORRUPTIONS = ("none", "partial_labels", "random_labels", "shuffled_pixels",
               "random_pixels", "gaussian_pixels")
LABEL_CORRUPTIONS = ("partial_labels", "random_labels")
PIXEL_CORRUPTIONS = ("shuffled_pixels", "random_pixels", "gaussian_pixels")

# Images per chunk in random_pixels, where whole-dataset index arrays would cost
# hundreds of megabytes. The streams are consumed in image order, so results do not
# depend on this number.
_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class Corrupted:
  """A dataset after one randomization test.

  Attributes:
    x_train: training images: uint8 [N, H, W, C], or float32 on the 0..255 scale
      for gaussian_pixels.
    y_train: int32 [N] training labels, corrupted for the label corruptions.
    x_test: test images, transformed like the training images by pixel corruptions.
    y_test: int32 test labels, always the clean ones.
    corrupted_mask: bool [N], the training examples *selected* for label corruption;
      with p = 1 and no force_different about 1/C of them keep their true label.
      All False for the other corruptions.
    changed_mask: bool [N], the training labels that now differ from the true ones
      (a subset of corrupted_mask).
    corrupt_test_images: whether the test images were transformed (pixel corruptions).
    fingerprint: `fingerprint(x_train, y_train)`, to show two runs saw the same data.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  corrupted_mask: np.ndarray
  changed_mask: np.ndarray
  corrupt_test_images: bool
  fingerprint: str


def _rng(seed: int, *tags: str) -> np.random.Generator:
  """A generator for (seed, tags): stable across processes, unlike `hash(str)`."""
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"config.seed={seed!r}: must be a non-negative integer")
  words = [int.from_bytes(t.encode(), "little") for t in tags]
  return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def _check_prob(prob: float) -> float:
  if not 0.0 <= prob <= 1.0:  # also rejects NaN
    raise ValueError(f"config.corrupt_prob={prob!r}: must be a probability in [0, 1]")
  return float(prob)


def corrupt_labels(labels: np.ndarray, num_classes: int, prob: float, seed: int,
                   force_different: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Replaces each label, independently with probability `prob`, by a random class.

  One uniform number and one replacement class are drawn for every example whatever
  `prob` is, so with a fixed seed the examples corrupted at p are a subset of those
  corrupted at any p' > p, with the same new labels: a sweep over p is nested.

  Args:
    labels: integer [N] labels in 0..num_classes-1.
    num_classes: the number of classes C.
    prob: the probability p that an example is selected for corruption.
    seed: the run's seed (the stream is tagged 'labels').
    force_different: draw the replacement uniformly among the C-1 other classes,
      so every selected label changes; by default (the paper) it is uniform over
      all C classes and a selected label is kept with probability 1/C.

  Returns:
    (new_labels int32 [N], selected bool [N]): `selected` marks the examples chosen
    for corruption, not those whose label changed (`new_labels != labels`).
  """
  prob = _check_prob(prob)
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels: expected integer [N], got {labels.dtype} {labels.shape}")
  low = 2 if force_different else 1
  if num_classes < low:
    raise ValueError(f"num_classes={num_classes}: needs at least {low} "
                     f"(force_different={force_different})")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels: values in [{labels.min()}, {labels.max()}], "
                     f"expected 0..{num_classes - 1}")
  rng = _rng(seed, "labels")
  selected = rng.random(labels.shape[0]) < prob
  if force_different:
    replacement = (labels + rng.integers(1, num_classes, size=labels.shape[0])) % num_classes
  else:
    replacement = rng.integers(0, num_classes, size=labels.shape[0])
  return np.where(selected, replacement, labels).astype(np.int32), selected


def _flat_pixels(x: np.ndarray) -> np.ndarray:
  """[N, H, W, C] -> [N, H*W, C]: a pixel's channels stay together."""
  n, h, w, c = x.shape
  return x.reshape(n, h * w, c)


def shuffled_pixels(x_train: np.ndarray, x_test: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Applies one random permutation of the H*W pixel positions to every image.

  The same permutation serves train and test images, so the test set stays a sample
  of the training distribution; a pixel's channels move together.
  """
  perm = _rng(seed, "shuffled_pixels").permutation(x_train.shape[1] * x_train.shape[2])
  return tuple(np.take(_flat_pixels(x), perm, axis=1).reshape(x.shape)
               for x in (x_train, x_test))


def random_pixels(x: np.ndarray, seed: int, split: str = "train") -> np.ndarray:
  """Permutes the pixel positions of each image with its own random permutation.

  Each image keeps its multiset of pixels (channels move together).

  Args:
    x: images [N, H, W, C].
    seed: the run's seed.
    split: names the stream, so that train and test image i do not share a
      permutation; `apply` passes 'train' and 'test'.
  """
  rng = _rng(seed, "random_pixels", split)
  flat = _flat_pixels(x)
  out = np.empty_like(flat)
  for i in range(0, flat.shape[0], _CHUNK):
    chunk = flat[i:i + _CHUNK]
    idx = np.tile(np.arange(chunk.shape[1], dtype=np.int32), (chunk.shape[0], 1))
    rng.permuted(idx, axis=1, out=idx)  # Fisher-Yates per row: exactly uniform.
    out[i:i + _CHUNK] = np.take_along_axis(chunk, idx[..., None], axis=1)
  return out.reshape(x.shape)


def channel_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and variance of images [N, H, W, C], in float64.

  uint8 images go through a 256-bin histogram per channel: exact, and without a
  float64 copy of the dataset.
  """
  if x.dtype != np.uint8:
    return x.mean(axis=(0, 1, 2), dtype=np.float64), x.var(axis=(0, 1, 2), dtype=np.float64)
  counts = np.stack([np.bincount(x[..., c].ravel(), minlength=256)
                     for c in range(x.shape[-1])]).astype(np.float64)
  values = np.arange(256.0)
  mean = counts @ values / counts.sum(axis=1)
  return mean, counts @ np.square(values) / counts.sum(axis=1) - np.square(mean)


def gaussian_pixels(x_train: np.ndarray, x_test: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Replaces every pixel by an i.i.d. Gaussian with the training set's channel moments.

  The mean and variance are per channel, on the 0..255 scale, from the training
  images only; the test images get the same distribution. Values are neither
  clipped nor rounded, so the moments are exact.

  Returns:
    (train, test): float32 arrays of the input shapes, on the 0..255 scale.
  """
  mean, var = channel_moments(x_train)
  mean, std = mean.astype(np.float32), np.sqrt(var).astype(np.float32)
  rng = _rng(seed, "gaussian_pixels")
  outs = []
  for x in (x_train, x_test):
    out = rng.standard_normal(out=np.empty(x.shape, np.float32), dtype=np.float32)
    out *= std  # in place: no float64 or second float32 copy of the dataset
    out += mean
    outs.append(out)
  return tuple(outs)


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
  """A 16-hex-digit sha256 of images and labels, their dtypes and shapes included."""
  h = hashlib.sha256()
  for a in (x, y):
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape};".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()[:16]


def apply(ds: ArrayDataset, corruption: str, corrupt_prob: float, seed: int,
          force_different: bool = False) -> Corrupted:
  """Applies one randomization test to a dataset.

  Args:
    ds: the clean dataset.
    corruption: one of `CORRUPTIONS`.
    corrupt_prob: p for partial_labels. Only partial_labels reads it, so the other
      corruptions require 0 (unset), or 1 for random_labels, rather than ignore it.
    seed: the run's seed; the same seed gives the same data in any process.
    force_different: config.corrupt_force_different, label corruptions only; see
      `corrupt_labels`.

  Returns:
    A `Corrupted`; 'none' returns the input arrays themselves (no copy).

  Raises:
    ValueError: an unknown corruption, a probability outside [0, 1], or a
      setting the chosen corruption does not read.
  """
  if corruption not in CORRUPTIONS:
    raise ValueError(f"config.corruption={corruption!r}: unknown; expected one of "
                     f"{', '.join(CORRUPTIONS)}")
  prob = _check_prob(corrupt_prob)
  implied = {"partial_labels": (prob,), "random_labels": (0.0, 1.0)}.get(corruption, (0.0,))
  if prob not in implied:
    raise ValueError(f"config.corrupt_prob={corrupt_prob!r}: only partial_labels reads it; "
                     f"with config.corruption={corruption!r} leave it at "
                     f"{' or '.join(map(str, implied))}")
  if force_different and corruption not in LABEL_CORRUPTIONS:
    raise ValueError("config.corrupt_force_different=True: only applies to "
                     f"{', '.join(LABEL_CORRUPTIONS)}, "
                     f"not config.corruption={corruption!r}")

  x_train, y_train, x_test = ds.x_train, ds.y_train, ds.x_test
  selected = np.zeros(y_train.shape[0], bool)
  if corruption in LABEL_CORRUPTIONS:
    p = 1.0 if corruption == "random_labels" else prob
    y_train, selected = corrupt_labels(y_train, ds.num_classes, p, seed, force_different)
  elif corruption == "shuffled_pixels":
    x_train, x_test = shuffled_pixels(x_train, x_test, seed)
  elif corruption == "random_pixels":
    x_train, x_test = random_pixels(x_train, seed, "train"), random_pixels(x_test, seed, "test")
  elif corruption == "gaussian_pixels":
    x_train, x_test = gaussian_pixels(x_train, x_test, seed)
  return Corrupted(
      x_train=x_train, y_train=y_train, x_test=x_test, y_test=ds.y_test,
      corrupted_mask=selected, changed_mask=y_train != ds.y_train,
      corrupt_test_images=corruption in PIXEL_CORRUPTIONS,
      fingerprint=fingerprint(x_train, y_train))
