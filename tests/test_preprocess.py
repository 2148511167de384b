"""Device-side preprocessing and augmentation numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rethinking.data import in_memory
from rethinking.data import preprocess


def _images(n=4, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_standardization_matches_tensorflow_definition():
  x = _images().astype(np.float32) / 255
  x[1] = 0.5  # A constant image: std 0, so the 1/sqrt(N) floor applies.
  out = np.asarray(preprocess.per_image_standardization(jnp.asarray(x)))
  n = x[0].size
  for img, got in zip(x, out):
    want = (img - img.mean()) / max(img.std(), 1 / np.sqrt(n))
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.allclose(out[0].mean(), 0, atol=1e-5) and np.isclose(out[0].std(), 1, atol=1e-4)


def test_eval_path_is_center_crop_then_standardize():
  x = _images()
  out = np.asarray(preprocess.preprocess(jnp.asarray(x), image_size=28))
  crop = x[:, 2:30, 2:30].astype(np.float32) / 255
  want = (crop - crop.mean((1, 2, 3), keepdims=True)) / crop.std((1, 2, 3), keepdims=True)
  assert out.shape == (4, 28, 28, 3)
  np.testing.assert_allclose(out, want, atol=1e-4)


def test_float_gaussian_pixels_take_the_same_path():
  x = _images()
  a = preprocess.preprocess(jnp.asarray(x), image_size=28)
  b = preprocess.preprocess(jnp.asarray(x.astype(np.float32)), image_size=28)
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_random_crop_is_a_window_of_the_image_and_varies():
  x = jnp.asarray(np.arange(32 * 32, dtype=np.float32).reshape(1, 32, 32, 1).repeat(64, 0))
  out = np.asarray(preprocess.random_crop(jax.random.PRNGKey(0), x, 28))
  tops, lefts = out[:, 0, 0, 0] // 32, out[:, 0, 0, 0] % 32
  for img, t, l in zip(out, tops.astype(int), lefts.astype(int)):
    np.testing.assert_array_equal(img, np.asarray(x[0, t:t + 28, l:l + 28]))
  assert set(tops.astype(int)) == set(range(5)) and set(lefts.astype(int)) == set(range(5))


def test_flip_flips_about_half_the_images():
  x = jnp.asarray(_images(n=400, size=8).astype(np.float32))
  out = np.asarray(preprocess.random_flip(jax.random.PRNGKey(1), x))
  flipped = np.all(out == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
  kept = np.all(out == np.asarray(x), axis=(1, 2, 3))
  assert np.all(flipped | kept) and 160 < flipped.sum() < 240


def test_rotation_angles_and_zero_fill():
  # A horizontal bar through the center: rotating by theta tilts it by theta.
  img = np.zeros((1, 33, 33, 1), np.float32)
  img[0, 16, :, 0] = 1.0
  x = jnp.asarray(np.repeat(img, 256, 0))
  out = np.asarray(preprocess.random_rotate(jax.random.PRNGKey(2), x, 25.0))
  rows, cols = np.meshgrid(np.arange(33) - 16, np.arange(33) - 16, indexing="ij")
  angles = []
  for o in out[..., 0]:
    w = o / o.sum()
    cov = np.cov(np.stack([cols.ravel(), rows.ravel()]), aweights=w.ravel())
    angles.append(np.degrees(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])))
  angles = np.abs(angles)
  assert angles.max() <= 25.5 and angles.max() > 20 and angles.min() < 3
  # Corners come from outside the image: zero, not wrapped or clamped.
  full = jnp.ones((8, 32, 32, 1))
  rotated = np.asarray(preprocess.random_rotate(jax.random.PRNGKey(3), full, 25.0))
  assert rotated[:, 0, 0, 0].max() < 0.5 and np.allclose(rotated[:, 16, 16, 0], 1.0)


@pytest.mark.parametrize("augment", preprocess.AUGMENTATIONS)
def test_every_augmentation_is_deterministic_per_key(augment):
  x = jnp.asarray(_images(n=8))
  run = lambda k: np.asarray(preprocess.preprocess(
      x, image_size=28, augment=augment, rng=jax.random.PRNGKey(k)))
  a, b, c = run(0), run(0), run(1)
  assert a.shape == (8, 28, 28, 3)
  np.testing.assert_array_equal(a, b)
  assert (augment == "none") == np.array_equal(a, c)


def test_epoch_order_covers_every_example_and_wraps():
  perm = in_memory.epoch_permutation(jax.random.PRNGKey(0), 3, 10)
  assert sorted(np.asarray(perm).tolist()) == list(range(10))
  assert not np.array_equal(perm, in_memory.epoch_permutation(jax.random.PRNGKey(0), 4, 10))
  steps = in_memory.steps_per_epoch(10, 4)
  batches = [np.asarray(in_memory.batch_indices(perm, s, 4)) for s in range(steps)]
  assert steps == 3 and set(np.concatenate(batches)) == set(range(10))
  np.testing.assert_array_equal(batches[-1][2:], np.asarray(perm)[:2])  # Wraps to the start.


def test_eval_batches_cover_each_example_once():
  idx, mask = in_memory.eval_batch_indices(10, 4)
  assert idx.shape == (3, 4)
  covered = np.asarray(idx)[np.asarray(mask) > 0]
  np.testing.assert_array_equal(np.sort(covered), np.arange(10))
