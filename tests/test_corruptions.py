"""Properties of the randomization tests (Zhang et al. 2017, Section 2.1)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rethinking.data import corruptions
from rethinking.data.arrays import ArrayDataset, load_arrays

ROOT = Path(__file__).resolve().parents[1]
CIFAR_10K = Path(__file__).resolve().parents[2] / "shared/data/cifar10_10k.npz"
C = 10
HW = 64  # 8x8 synthetic images


def _sigmas(count, n, p):
  """How many binomial standard deviations `count` lies from n * p."""
  return abs(count - n * p) / max(np.sqrt(n * p * (1 - p)), 1e-12)


def _dataset(n_train=2000, n_test=500, seed=0):
  rng = np.random.default_rng(seed)
  return ArrayDataset(
      x_train=rng.integers(0, 256, (n_train, 8, 8, 3), dtype=np.uint8),
      y_train=rng.integers(0, C, n_train).astype(np.int32),
      x_test=rng.integers(0, 256, (n_test, 8, 8, 3), dtype=np.uint8),
      y_test=rng.integers(0, C, n_test).astype(np.int32),
      num_classes=C, name="synthetic")


def _indexed_images(n):
  """n copies of an image whose pixel at position j has channels (j, j+64, j+128)."""
  pos = np.arange(HW, dtype=np.uint8)
  image = np.stack([pos, pos + HW, pos + 2 * HW], axis=-1).reshape(8, 8, 3)
  return np.broadcast_to(image, (n, 8, 8, 3)).copy()


def _source_positions(images):
  """For images made by `_indexed_images`: [N, 64], where each pixel came from."""
  flat = images.reshape(images.shape[0], HW, 3).astype(np.int64)
  # Channels moved together iff each pixel is still (j, j+64, j+128) for some j.
  np.testing.assert_array_equal(flat[..., 1], flat[..., 0] + HW)
  np.testing.assert_array_equal(flat[..., 2], flat[..., 0] + 2 * HW)
  return flat[..., 0]


# ----------------------------------------------------------------- labels

@pytest.mark.parametrize("p", [0.0, 0.1, 0.37, 0.8, 1.0])
def test_selected_fraction_is_binomial_in_p(p):
  labels = np.random.default_rng(1).integers(0, C, 20000)
  new, selected = corruptions.corrupt_labels(labels, C, p, seed=3)
  assert new.dtype == np.int32 and selected.dtype == bool
  assert _sigmas(selected.sum(), labels.size, p) <= 4
  if p in (0.0, 1.0):
    assert selected.all() == (p == 1.0) and selected.any() == (p == 1.0)
  np.testing.assert_array_equal(new[~selected], labels[~selected])


def test_selected_keep_their_label_one_time_in_c_unless_forced():
  labels = np.random.default_rng(1).integers(0, C, 20000)
  new, selected = corruptions.corrupt_labels(labels, C, 0.6, seed=4)
  kept = (new == labels)[selected]
  assert _sigmas(kept.sum(), kept.size, 1 / C) <= 4
  forced, selected_f = corruptions.corrupt_labels(labels, C, 0.6, seed=4, force_different=True)
  np.testing.assert_array_equal(selected_f, selected)  # same selection stream
  assert not (forced == labels)[selected_f].any()
  np.testing.assert_array_equal(forced[~selected_f], labels[~selected_f])


@pytest.mark.parametrize("force", [False, True])
def test_random_labels_are_uniform_whatever_the_true_labels(force):
  labels = np.zeros(20000, np.int64)  # maximally skewed true labels
  new, _ = corruptions.corrupt_labels(labels, C, 1.0, seed=5, force_different=force)
  classes = np.arange(1, C) if force else np.arange(C)
  counts = np.bincount(new, minlength=C)
  if force:
    assert counts[0] == 0
  expected = labels.size / classes.size
  chi2 = ((counts[classes] - expected) ** 2 / expected).sum()
  assert chi2 < 40, counts  # df <= 9: a p-value around 1e-5


def test_label_corruption_is_seeded_and_nested_in_p():
  labels = np.random.default_rng(1).integers(0, C, 5000)
  a, sel_a = corruptions.corrupt_labels(labels, C, 0.3, seed=7)
  b, sel_b = corruptions.corrupt_labels(labels, C, 0.3, seed=7)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(sel_a, sel_b)
  other, _ = corruptions.corrupt_labels(labels, C, 0.3, seed=8)
  assert (other != a).mean() > 0.1
  # A sweep over p corrupts nested sets, with the same replacement labels.
  hi, sel_hi = corruptions.corrupt_labels(labels, C, 0.6, seed=7)
  assert sel_hi[sel_a].all() and sel_hi.sum() > sel_a.sum()
  np.testing.assert_array_equal(hi[sel_a], a[sel_a])


def test_random_labels_is_partial_labels_with_p_one():
  ds = _dataset()
  rand = corruptions.apply(ds, "random_labels", 0.0, seed=2)
  part = corruptions.apply(ds, "partial_labels", 1.0, seed=2)
  np.testing.assert_array_equal(rand.y_train, part.y_train)
  assert rand.corrupted_mask.all()
  # The test split stays clean; only the training labels move.
  assert rand.x_train is ds.x_train and rand.x_test is ds.x_test and rand.y_test is ds.y_test
  assert not rand.corrupt_test_images
  np.testing.assert_array_equal(rand.changed_mask, rand.y_train != ds.y_train)
  assert _sigmas(rand.changed_mask.sum(), ds.y_train.size, 1 - 1 / C) <= 4


def test_none_returns_the_data_unchanged():
  ds = _dataset()
  out = corruptions.apply(ds, "none", 0.0, seed=0)
  for field in ("x_train", "y_train", "x_test", "y_test"):
    assert getattr(out, field) is getattr(ds, field)
  assert not out.corrupted_mask.any() and not out.changed_mask.any()
  assert not out.corrupt_test_images
  assert out.fingerprint == corruptions.fingerprint(ds.x_train, ds.y_train)


# ----------------------------------------------------------------- pixels

def test_shuffled_pixels_is_one_permutation_for_train_and_test():
  train = _indexed_images(50)
  train[1:] = np.random.default_rng(0).integers(0, 256, train[1:].shape, dtype=np.uint8)
  test = np.random.default_rng(1).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
  new_train, new_test = corruptions.shuffled_pixels(train, test, seed=3)
  perm = _source_positions(new_train[:1])[0]  # recovered from train image 0
  np.testing.assert_array_equal(np.sort(perm), np.arange(HW))
  assert (perm != np.arange(HW)).sum() > HW // 2
  for orig, new in ((train, new_train), (test, new_test)):
    np.testing.assert_array_equal(new.reshape(-1, HW, 3), orig.reshape(-1, HW, 3)[:, perm])
  again = corruptions.shuffled_pixels(train, test, seed=3)
  np.testing.assert_array_equal(again[1], new_test)
  assert not np.array_equal(corruptions.shuffled_pixels(train, test, seed=4)[1], new_test)


def test_random_pixels_gives_each_image_its_own_uniform_permutation():
  images = _indexed_images(2000)
  perms = _source_positions(corruptions.random_pixels(images, seed=3))
  np.testing.assert_array_equal(np.sort(perms, axis=1), np.broadcast_to(np.arange(HW), perms.shape))
  assert len(np.unique(perms, axis=0)) == len(perms)
  # A uniform permutation has one fixed point on average (variance 1).
  fixed = (perms == np.arange(HW)).sum(axis=1)
  assert abs(fixed.mean() - 1) < 4 / np.sqrt(len(perms))
  # Every position is equally likely to receive each source position.
  assert abs(perms.mean(axis=0) - (HW - 1) / 2).max() < 4 * np.sqrt((HW**2 - 1) / 12 / len(perms))


def test_random_pixels_keeps_each_images_pixel_multiset():
  x = _dataset().x_train
  out = corruptions.random_pixels(x, seed=1)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert (out != x).any(axis=(1, 2, 3)).mean() > 0.99

  def sorted_pixels(a):
    packed = a.reshape(len(a), HW, 3).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    return np.sort(packed, axis=1)

  np.testing.assert_array_equal(sorted_pixels(out), sorted_pixels(x))


def test_random_pixels_is_seeded_per_split_and_independent_of_chunking(monkeypatch):
  images = _indexed_images(300)
  train = corruptions.random_pixels(images, seed=5)
  np.testing.assert_array_equal(corruptions.random_pixels(images, seed=5), train)
  assert not np.array_equal(corruptions.random_pixels(images, seed=6), train)
  test = corruptions.random_pixels(images, seed=5, split="test")
  assert (test != train).any(axis=(1, 2, 3)).all()  # image i: different permutations
  monkeypatch.setattr(corruptions, "_CHUNK", 7)
  np.testing.assert_array_equal(corruptions.random_pixels(images, seed=5), train)


def _moments(x):
  """Per-channel mean and std, accumulated in float64 (float32 sums drift by ~1%)."""
  flat = x.reshape(-1, x.shape[-1])
  return flat.mean(axis=0, dtype=np.float64), flat.std(axis=0, dtype=np.float64)


def test_gaussian_pixels_match_the_training_sets_channel_moments():
  rng = np.random.default_rng(0)
  # Channels with different means and spreads; test images from another distribution.
  train = np.stack([rng.integers(0, 256, (2000, 8, 8)), rng.integers(100, 140, (2000, 8, 8)),
                    rng.binomial(255, 0.1, (2000, 8, 8))], axis=-1).astype(np.uint8)
  test = np.full((500, 8, 8, 3), 250, np.uint8)
  new_train, new_test = corruptions.gaussian_pixels(train, test, seed=1)
  assert new_train.dtype == new_test.dtype == np.float32
  assert new_train.shape == train.shape and new_test.shape == test.shape
  mean, std = _moments(train)
  for new in (new_train, new_test):
    got_mean, got_std = _moments(new)
    n = new.size // 3
    np.testing.assert_array_less(abs(got_mean - mean), 4 * std / np.sqrt(n))
    np.testing.assert_array_less(abs(got_std - std), 4 * std / np.sqrt(2 * n))
  assert new_train.min() < 0  # not clipped to 0..255: channel 0 has mean ~127, std ~74
  assert not np.array_equal(new_train[: len(test)], new_test)
  np.testing.assert_array_equal(corruptions.gaussian_pixels(train, test, seed=1)[1], new_test)


@pytest.mark.parametrize("corruption", corruptions.PIXEL_CORRUPTIONS)
def test_pixel_corruptions_keep_clean_labels_and_shapes(corruption):
  ds = _dataset()
  out = corruptions.apply(ds, corruption, 0.0, seed=0)
  assert out.corrupt_test_images
  assert out.y_train is ds.y_train and out.y_test is ds.y_test
  assert not out.corrupted_mask.any() and not out.changed_mask.any()
  assert out.x_train.shape == ds.x_train.shape and out.x_test.shape == ds.x_test.shape
  assert (out.x_test != ds.x_test).any()
  assert out.fingerprint != corruptions.fingerprint(ds.x_train, ds.y_train)


# ------------------------------------------------------ fingerprint, restarts

def test_fingerprint_sees_one_label_one_pixel_dtype_and_shape():
  ds = _dataset()
  x, y = ds.x_train, ds.y_train
  base = corruptions.fingerprint(x, y)
  assert corruptions.fingerprint(x.copy(), y.copy()) == base
  assert corruptions.fingerprint(np.asfortranarray(x), y) == base
  y2 = y.copy()
  y2[1234] = (y2[1234] + 1) % C
  x2 = x.copy()
  x2[1999, 7, 7, 2] ^= 1
  variants = [(x, y2), (x2, y), (x, y.astype(np.int64)), (x.reshape(2000, HW, 3), y)]
  prints = {corruptions.fingerprint(*v) for v in variants}
  assert base not in prints and len(prints) == len(variants)


def test_a_restart_in_a_new_process_rebuilds_identical_data(tmp_path):
  path = tmp_path / "data.npz"
  ds = _dataset(n_train=300, n_test=50)
  np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
  settings = [(c, 0.3 if c == "partial_labels" else 0.0) for c in corruptions.CORRUPTIONS]
  ds = load_arrays(str(path))
  here = [corruptions.apply(ds, c, p, seed=11).fingerprint for c, p in settings]
  assert len(set(here)) == len(here)
  script = ("from rethinking.data import arrays, corruptions\n"
            f"ds = arrays.load_arrays({str(path)!r})\n"
            f"print(*(corruptions.apply(ds, c, p, seed=11).fingerprint for c, p in {settings!r}))")
  env = dict(os.environ, PYTHONHASHSEED="12345")  # a different str hash than this process
  there = subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout.split()
  assert there == here


# ----------------------------------------------------------------- errors

@pytest.mark.parametrize("corruption, prob, force, match", [
    ("bogus", 0.0, False, r"config\.corruption='bogus'.*random_labels"),
    ("partial_labels", 1.5, False, r"config\.corrupt_prob=1\.5.*\[0, 1\]"),
    ("partial_labels", -0.1, False, r"config\.corrupt_prob=-0\.1"),
    ("partial_labels", float("nan"), False, r"config\.corrupt_prob=nan"),
    ("random_pixels", 0.5, False, r"config\.corrupt_prob=0\.5.*only partial_labels"),
    ("random_labels", 0.5, False, r"config\.corrupt_prob=0\.5.*0\.0 or 1\.0"),
    ("gaussian_pixels", 0.0, True, r"config\.corrupt_force_different=True.*gaussian_pixels"),
])
def test_bad_settings_raise_naming_the_field(corruption, prob, force, match):
  with pytest.raises(ValueError, match=match):
    corruptions.apply(_dataset(n_train=20, n_test=5), corruption, prob, seed=0,
                      force_different=force)


def test_bad_label_arguments_raise():
  with pytest.raises(ValueError, match=r"labels: values in \[0, 10\]"):
    corruptions.corrupt_labels(np.array([0, 10]), C, 0.5, seed=0)
  with pytest.raises(ValueError, match=r"num_classes=1"):
    corruptions.corrupt_labels(np.zeros(4, int), 1, 0.5, seed=0, force_different=True)
  with pytest.raises(ValueError, match=r"config\.seed=-1"):
    corruptions.corrupt_labels(np.zeros(4, int), C, 0.5, seed=-1)


# ----------------------------------------------------------------- real data

@pytest.mark.skipif(not CIFAR_10K.exists(), reason=f"real data not found at {CIFAR_10K}")
def test_cifar10_10k_randomization_tests():
  ds = load_arrays(str(CIFAR_10K))
  rand = corruptions.apply(ds, "random_labels", 0.0, seed=0)
  assert _sigmas(rand.changed_mask.sum(), ds.y_train.size, 1 - 1 / C) <= 4
  # The data README's training-set moments (pixel / 255), which the Gaussian must match.
  gauss = corruptions.apply(ds, "gaussian_pixels", 0.0, seed=0)
  mean, std = _moments(gauss.x_train[:2000])  # 6M draws: about 1e-4 of noise
  np.testing.assert_allclose(mean / 255, [0.491, 0.482, 0.447], atol=2e-3)
  np.testing.assert_allclose(std / 255, [0.245, 0.243, 0.261], atol=2e-3)
  np.testing.assert_allclose(_moments(gauss.x_test)[0], mean, atol=0.5)
  shuffled = corruptions.apply(ds, "shuffled_pixels", 0.0, seed=0)
  np.testing.assert_array_equal(np.sort(shuffled.x_test.reshape(-1, 3), axis=0),
                                np.sort(ds.x_test.reshape(-1, 3), axis=0))
  np.testing.assert_array_equal(shuffled.y_test, ds.y_test)
