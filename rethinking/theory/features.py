"""What the Section 4 and 5 experiments feed on: image subsets and their features.

`load_subsets` draws fixed class-balanced train and test subsets of a dataset.
`make_features(name, x_train, ...)` returns a function from uint8 images [N, H, W, C]
to float32 feature rows [N, D]. Features that depend on data (the random convolutional
filters) are drawn from the training images only.

- raw: pixels / 255, flattened (the paper's "no preprocessing").
- gabor: a first-order wavelet scattering transform (Bruna & Mallat, 2013): the moduli
  of complex Gabor (Morlet) wavelets at `GABOR_SCALES` scales and `GABOR_ORIENTATIONS`
  orientations, and the image itself, each blurred by a Gaussian and subsampled.
  Computed with FFTs. The paper does not say which Gabor transform it used.
- random_conv: Coates & Ng (2011) single-layer features with random filters: 6x6
  patches, each normalised for brightness and contrast and ZCA-whitened; the filters
  are such patches drawn at random from the training images (no k-means); responses
  are split by sign and soft-thresholded, relu(z - t) and relu(-z - t), then
  sum-pooled over the four quadrants: 8 x num_filters features. The paper used 32,000
  filters.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rethinking.data import arrays
from rethinking.theory.kernels import map_row_blocks

Featurizer = Callable[[np.ndarray], np.ndarray]

GABOR_SCALES = 2  # J: wavelets of width 0.8 * 2^j pixels, j < J
GABOR_ORIENTATIONS = 8  # L
GABOR_SUBSAMPLE = 2  # output grid step; the blur has width 0.8 * 2^J

PATCH = 6  # Coates & Ng's receptive field
PATCH_VAR_EPS = 10.0  # added to a patch's variance, in 0-255 pixel units (Coates & Ng)
ZCA_EPS = 0.1  # added to the whitening eigenvalues of the normalised patches
THRESHOLD = 0.25  # soft threshold on the responses of unit-norm whitened filters
WHITENING_PATCHES = 20_000


def load_subsets(dataset: str, num_train: int, num_test: int, *, seed: int = 0,
                 data_dir: str | None = None) -> arrays.ArrayDataset:
  """The dataset cut to class-balanced subsets of num_train and num_test (0: all)."""
  ds = arrays.load_arrays(dataset, data_dir)
  keep = {}
  for split, num in (("train", num_train), ("test", num_test)):
    x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
    idx = arrays.balanced_subset(y, num, seed) if num else np.arange(len(y))
    keep[f"x_{split}"], keep[f"y_{split}"] = x[idx], y[idx]
  return arrays.ArrayDataset(num_classes=ds.num_classes, name=ds.name, **keep)


def _to_float(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  return images.astype(np.float32) / 255.0


def _apply_in_blocks(fn, images: np.ndarray, out_dim: int, block_size: int) -> np.ndarray:
  """Runs a per-block feature function over all images under one jit."""
  run = jax.jit(lambda x: map_row_blocks(fn, x, out_dim, block_size, jnp.float32))
  return np.asarray(run(jnp.asarray(_to_float(images))))


def raw_features(x_train: np.ndarray, *, num_filters: int, seed: int) -> Featurizer:
  """Pixels / 255, flattened."""
  del x_train, num_filters, seed
  return lambda images: _to_float(images).reshape(len(images), -1)


def morlet_filters(size: int, scales: int, orientations: int) -> np.ndarray:
  """Zero-mean complex Gabor (Morlet) wavelets [scales * orientations, size, size].

  Centred on pixel (0, 0) of a periodic size x size grid (ready for FFT convolution).
  Scale j has envelope width 0.8 * 2^j, elongated 2x along the wave fronts, and centre
  frequency 3 pi / 4 / 2^j, as in Kymatio's defaults for 8 orientations.
  """
  coords = np.fft.fftfreq(size, 1.0 / size)  # 0, 1, ..., -1: periodic offsets
  u, v = np.meshgrid(coords, coords, indexing="ij")
  out = []
  for j in range(scales):
    sigma, xi = 0.8 * 2**j, 3 * np.pi / 4 / 2**j
    for k in range(orientations):
      theta = np.pi * k / orientations
      along = u * np.cos(theta) + v * np.sin(theta)  # along the wave vector
      across = -u * np.sin(theta) + v * np.cos(theta)
      envelope = np.exp(-(along**2 + (0.5 * across)**2) / (2 * sigma**2))
      wave = np.exp(1j * xi * along)
      beta = (envelope * wave).sum() / envelope.sum()  # removes the mean
      psi = envelope * (wave - beta)
      out.append(psi / np.abs(psi).sum())
  return np.stack(out)


def gaussian_filter(size: int, sigma: float) -> np.ndarray:
  """A unit-sum Gaussian blur centred on pixel (0, 0) of a periodic size x size grid."""
  coords = np.fft.fftfreq(size, 1.0 / size)
  u, v = np.meshgrid(coords, coords, indexing="ij")
  g = np.exp(-(u**2 + v**2) / (2 * sigma**2))
  return g / g.sum()


def gabor_features(x_train: np.ndarray, *, num_filters: int, seed: int,
                   block_size: int = 512) -> Featurizer:
  """First-order scattering: [x * phi, |x * psi_{j,theta}| * phi] on a subsampled grid.

  Grayscale images (MNIST); colour images are averaged to gray first.
  """
  del num_filters, seed
  height, width = x_train.shape[1:3]
  pad = 2 * 2**GABOR_SCALES  # zero border so the periodic convolution does not wrap
  size = max(height, width) + 2 * pad
  psi_hat = jnp.asarray(np.fft.fft2(morlet_filters(size, GABOR_SCALES, GABOR_ORIENTATIONS)),
                        jnp.complex64)
  phi_hat = jnp.asarray(np.fft.fft2(gaussian_filter(size, 0.8 * 2**GABOR_SCALES)), jnp.complex64)
  rows = slice(pad, pad + height, GABOR_SUBSAMPLE)
  cols = slice(pad, pad + width, GABOR_SUBSAMPLE)
  num_channels = 1 + psi_hat.shape[0]
  out_dim = num_channels * len(range(height)[::GABOR_SUBSAMPLE]) * len(
      range(width)[::GABOR_SUBSAMPLE])

  def block(x):  # [B, H, W, C] float32
    gray = jnp.mean(x, axis=-1)
    gray = jnp.pad(gray, ((0, 0), (pad, size - height - pad), (pad, size - width - pad)))
    x_hat = jnp.fft.fft2(gray)[:, None]  # [B, 1, S, S]
    modulus = jnp.abs(jnp.fft.ifft2(x_hat * psi_hat))  # [B, J*L, S, S]
    channels = jnp.concatenate([x_hat, jnp.fft.fft2(modulus)], axis=1)
    low = jnp.real(jnp.fft.ifft2(channels * phi_hat))[:, :, rows, cols]
    return low.reshape(x.shape[0], -1)

  return lambda images: _apply_in_blocks(block, images, out_dim, block_size)


def _patch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of every PATCH x PATCH x C patch (VALID positions), via box filters."""
  box = jnp.ones((PATCH, PATCH, x.shape[-1], 1), x.dtype) / (PATCH * PATCH * x.shape[-1])
  conv = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding="VALID",
                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                           precision=lax.Precision.HIGHEST)
  mean = conv(x, box)
  return mean, jnp.maximum(conv(x * x, box) - mean * mean, 0)


def _normalise_patches(patches: np.ndarray) -> np.ndarray:
  """Brightness and contrast normalisation of flattened patches in 0-255 units."""
  p = patches - patches.mean(axis=1, keepdims=True)
  return p / np.sqrt(p.var(axis=1, keepdims=True) + PATCH_VAR_EPS)


def _random_patches(images: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
  """num random PATCH x PATCH x C patches [num, PATCH * PATCH * C], float64 in 0-255."""
  n, h, w = images.shape[:3]
  i = rng.integers(0, n, num)
  r = rng.integers(0, h - PATCH + 1, num)
  c = rng.integers(0, w - PATCH + 1, num)
  offsets = np.arange(PATCH)
  patches = images[i[:, None, None], (r[:, None] + offsets)[:, :, None],
                   (c[:, None] + offsets)[:, None, :]]
  return patches.reshape(num, -1).astype(np.float64)


def random_conv_features(x_train: np.ndarray, *, num_filters: int, seed: int,
                         block_size: int = 64) -> Featurizer:
  """Coates & Ng features with `num_filters` random whitened patches as filters."""
  images = np.asarray(x_train)
  if images.ndim == 3:
    images = images[..., None]
  rng = np.random.default_rng(seed)
  sample = _normalise_patches(_random_patches(images, WHITENING_PATCHES, rng))
  patch_mean = sample.mean(axis=0)
  eigval, eigvec = np.linalg.eigh(np.cov(sample, rowvar=False))
  zca = eigvec @ np.diag(1 / np.sqrt(np.maximum(eigval, 0) + ZCA_EPS)) @ eigvec.T
  filters = (_normalise_patches(_random_patches(images, num_filters, rng)) - patch_mean) @ zca
  filters /= np.linalg.norm(filters, axis=1, keepdims=True)
  # The response to a whitened normalised patch p is f . zca (p - mean) = g . p - g . mean
  # with g = zca f (zca is symmetric), and g . p comes from one convolution of the raw
  # image corrected by the patch's box-filtered mean and variance.
  g = filters @ zca
  g_hwio = jnp.asarray(g.T.reshape((PATCH, PATCH, images.shape[-1], num_filters)), jnp.float32)
  g_sum = jnp.asarray(g.sum(axis=1), jnp.float32)
  g_mean = jnp.asarray(g @ patch_mean, jnp.float32)
  out_dim = 8 * num_filters

  def block(x):  # [B, H, W, C] float32 in [0, 1]
    x = x * 255.0
    dot = lax.conv_general_dilated(x, g_hwio, (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   precision=lax.Precision.HIGHEST)
    mean, var = _patch_stats(x)
    z = (dot - mean * g_sum) / jnp.sqrt(var + PATCH_VAR_EPS) - g_mean
    codes = jnp.concatenate([jax.nn.relu(z - THRESHOLD), jax.nn.relu(-z - THRESHOLD)], -1)
    h, w = codes.shape[1:3]
    quads = [codes[:, rs, cs].sum(axis=(1, 2)) for rs in (slice(0, h // 2), slice(h // 2, h))
             for cs in (slice(0, w // 2), slice(w // 2, w))]
    return jnp.concatenate(quads, axis=-1)

  return lambda imgs: _apply_in_blocks(block, imgs, out_dim, block_size)


FEATURES = {"raw": raw_features, "gabor": gabor_features, "random_conv": random_conv_features}


def make_features(name: str, x_train: np.ndarray, *, num_filters: int = 1024,
                  seed: int = 0) -> Featurizer:
  """A featurizer by name, fitted (where it needs data) on the training images.

  Args:
    name: one of FEATURES.
    x_train: uint8 training images [N, H, W, C] (or [N, H, W]).
    num_filters: random_conv's number of filters (ignored by the others).
    seed: random_conv's seed for the patches.

  Returns:
    images uint8 [N, H, W, C] -> float32 [N, D].
  """
  if name not in FEATURES:
    raise ValueError(f"features={name!r}: unknown; known features are {sorted(FEATURES)}")
  return FEATURES[name](x_train, num_filters=num_filters, seed=seed)
