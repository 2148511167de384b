"""Theorem 1's construction: exact interpolation, well-separated projections, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rethinking.theory import expressivity

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(
    not all((DATA / f).exists() for f in ("mnist.npz", "cifar10_10k.npz")),
    reason=f"real data (mnist.npz, cifar10_10k.npz) not found in {DATA}")


@pytest.mark.parametrize("n, d, k", [
    (400, 3, 1),  # d < n, scalar targets
    (500, 20, 10),  # d < n, one column per class
    (150, 600, 3),  # d > n
    (300, 1, 2),  # the points already lie on a line
])
def test_interpolates_random_data(n, d, k):
  rng = np.random.default_rng(n + d)
  z = rng.standard_normal((n, d))
  y = rng.standard_normal((n, k)).squeeze(-1) if k == 1 else rng.standard_normal((n, k))
  net = expressivity.fit(z, y)
  assert expressivity.max_relative_residual(net, z, y) < 1e-6
  assert net(z).shape == y.shape
  assert net.num_params == d + n + n * k  # 2n + d for one output column


def test_matrix_is_lower_triangular_with_positive_diagonal():
  rng = np.random.default_rng(0)
  z, y = rng.standard_normal((60, 4)), rng.standard_normal(60)
  net = expressivity.fit(z, y)
  order = np.argsort(z @ net.a)
  a = np.maximum((z @ net.a)[order][:, None] - net.b[None, :], 0)
  np.testing.assert_array_equal(np.triu(a, 1), 0)
  assert np.all(np.diag(a) > 0)
  np.testing.assert_allclose(a @ net.w, y[order], atol=1e-9)


def test_projections_evenly_spaced_when_d_exceeds_n():
  # With d >= n the direction is refit so the projections are equally spaced: the
  # best relative gap there is, 1 / (n - 1). A random direction is far worse.
  rng = np.random.default_rng(1)
  z = rng.standard_normal((200, 500))
  net = expressivity.fit(z, np.zeros(200))
  np.testing.assert_allclose(net.relative_gap, 1 / 199, rtol=1e-6)
  assert expressivity.relative_gaps(z @ rng.standard_normal((500, 1)))[0] < 0.1 / 199


def test_identical_points_with_different_targets_are_named():
  rng = np.random.default_rng(2)
  z, y = rng.standard_normal((10, 3)), np.arange(10.0)
  z[7] = z[3]
  with pytest.raises(ValueError, match=r"points \[3, 7\] are identical"):
    expressivity.fit(z, y)


def test_identical_points_with_equal_targets_share_a_knot():
  rng = np.random.default_rng(3)
  z, y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
  z[7], y[7] = z[3], y[3]
  net = expressivity.fit(z, y)
  assert net.b.shape == (9,)
  assert expressivity.max_relative_residual(net, z, y) < 1e-9


@needs_data
def test_fits_random_labels_of_real_images():
  from rethinking.data.arrays import balanced_subset, load_arrays
  ds = load_arrays(str(DATA / "cifar10_10k.npz"))
  idx = balanced_subset(ds.y_train, 300, seed=0)
  z = ds.x_train[idx].reshape(300, -1) / 255.0
  labels = np.random.default_rng(0).integers(0, 10, 300)
  y = np.eye(10)[labels]
  net = expressivity.fit(z, y)
  assert expressivity.max_relative_residual(net, z, y) < 1e-6
  np.testing.assert_array_equal(np.argmax(net(z), axis=1), labels)


@needs_data
def test_command_line_writes_json(tmp_path):
  out = tmp_path / "result.json"
  subprocess.run([sys.executable, "-m", "rethinking.expressivity",
                  f"--dataset={DATA / 'mnist.npz'}", "--num_points=200", "--num_test=100",
                  "--random_labels", f"--out={out}"], check=True, cwd=REPO,
                 capture_output=True)
  result = json.loads(out.read_text())
  assert result["num_points"] == 200 and result["num_test"] == 100
  assert result["residual"] < 1e-6 and result["train_error"] == 0
  assert result["min_gap"] > 0 and result["weight_norm"] > 0
  assert {"time_s", "memory", "test_error", "num_params"} <= result.keys()
