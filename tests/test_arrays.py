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
