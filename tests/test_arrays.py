"""Loading in-memory datasets: the bundled CIFAR-10 sample, .npz files and their mistakes."""

import os

import numpy as np
import pytest

from rethinking.data import arrays


def test_bundled_sample_is_the_documented_subset_of_the_shared_data(cifar_npz):
  """cifar10_sample is `balanced_subset(seed=0)` of each split of cifar10_10k.npz: 1,000
  train and 500 test images, class-balanced, bit for bit; small enough to ship."""
  sample = arrays.load_arrays("cifar10_sample")
  path = os.path.join(os.path.dirname(arrays.__file__), arrays.PACKAGED["cifar10_sample"])
  assert os.path.getsize(path) < 4e6
  with np.load(cifar_npz) as full:
    for split, n in (("train", 1000), ("test", 500)):
      idx = arrays.balanced_subset(full[f"y_{split}"], n, seed=0)
      np.testing.assert_array_equal(getattr(sample, f"x_{split}"), full[f"x_{split}"][idx])
      np.testing.assert_array_equal(getattr(sample, f"y_{split}"), full[f"y_{split}"][idx])
  assert np.bincount(sample.y_train).tolist() == [100] * 10
  assert np.bincount(sample.y_test).tolist() == [50] * 10
  assert sample.num_classes == 10 and sample.image_shape == (32, 32, 3)


def _npz(tmp_path, **overrides):
  rng = np.random.default_rng(0)
  data = {"x_train": rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
          "y_train": np.arange(20) % 10, "x_test": rng.integers(0, 256, (5, 8, 8, 3),
                                                                  dtype=np.uint8),
          "y_test": np.arange(5) % 10, **overrides}
  path = tmp_path / "d.npz"
  np.savez(path, **data)
  return str(path)


@pytest.mark.parametrize("overrides,message", [
    ({"x_test": np.zeros((0, 8, 8, 3), np.uint8), "y_test": np.zeros(0, np.int64)},
     r"x_test \(0, 8, 8, 3\) / y_test \(0,\) hold no examples"),
    ({"y_train": np.full(20, 3)}, r"y_train has a single class \(3\)"),
    ({"x_train": np.zeros((20, 8, 8, 3), np.float32)}, r"x_train has dtype float32"),
])
def test_bad_npz_is_one_error_naming_the_file_and_field(tmp_path, overrides, message):
  path = _npz(tmp_path, **overrides)
  with pytest.raises(ValueError, match=message) as e:
    arrays.load_arrays(path)
  assert str(e.value).startswith(f"config.dataset={path!r}: ")


def test_remove_empty_dirs_keeps_folders_with_files(tmp_path):
  """What a failed TFDS prepare leaves is removed only where it holds no file."""
  (tmp_path / "a" / "b" / "c").mkdir(parents=True)
  (tmp_path / "k" / "d").mkdir(parents=True)
  (tmp_path / "k" / "keep.txt").write_text("x")
  arrays._remove_empty_dirs(str(tmp_path / "a"))  # pylint: disable=protected-access
  arrays._remove_empty_dirs(str(tmp_path / "k"))  # pylint: disable=protected-access
  assert not (tmp_path / "a").exists()
  assert (tmp_path / "k" / "keep.txt").exists() and not (tmp_path / "k" / "d").exists()


def _config(**overrides):
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  config = cifar10.get_config("model=mlp_1x512,corruption=random_labels")
  config.update({"dataset": "cifar10_sample", "num_train": 200, "num_test": 100, **overrides})
  return config


def test_data_seed_fixes_the_data_and_seed_the_rest():
  """data_seed picks the subset and the random labels; seed alone leaves them as they are
  (the same random labels trained from several initializations); -1 follows seed."""
  from rethinking import train  # pylint: disable=g-import-not-at-top
  base = train.load_data(_config(seed=0))
  same_data = train.load_data(_config(seed=1, data_seed=0))
  other_data = train.load_data(_config(seed=0, data_seed=1))
  follows_seed = train.load_data(_config(seed=1))
  assert base.fingerprint == same_data.fingerprint
  np.testing.assert_array_equal(base.y_train, same_data.y_train)
  assert other_data.fingerprint != base.fingerprint
  assert follows_seed.fingerprint == train.load_data(_config(seed=0, data_seed=1)).fingerprint


def test_resize_downscales_whole_images_by_area():
  """resize=16 on 32x32 images: each pixel the mean of a 2x2 block (not a crop)."""
  from rethinking import train  # pylint: disable=g-import-not-at-top
  full = arrays.load_arrays("cifar10_sample")
  small = train.load_data(_config(corruption="none", num_train=0, num_test=0, resize=16,
                                  image_size=14))
  assert small.x_train.shape == (1000, 16, 16, 3) and small.x_test.shape == (500, 16, 16, 3)
  blocks = full.x_train.astype(np.float64).reshape(1000, 16, 2, 16, 2, 3).mean(axis=(2, 4))
  assert np.abs(small.x_train - blocks).max() <= 0.5 + 1e-9  # Rounded to uint8.
  # 32 -> 12: each pixel the mean of an 8/3 x 8/3 square; the corner one covers
  # pixels 0, 1 fully and 2 by two thirds along each axis.
  twelve = train.load_data(_config(corruption="none", resize=12, image_size=12))
  sub = train.load_data(_config(corruption="none"))
  w = np.array([1, 1, 2 / 3]) / (8 / 3)
  corner = np.einsum("h,nhwc,w->nc", w, sub.x_train[:, :3, :3].astype(np.float64), w)
  assert twelve.x_train.shape == (200, 12, 12, 3)
  assert np.abs(twelve.x_train[:, 0, 0] - corner).max() <= 0.5 + 1e-9
  with pytest.raises(ValueError, match=r"config.resize=40 is not allowed"):
    train.load_data(_config(resize=40))
