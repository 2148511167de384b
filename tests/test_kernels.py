"""Section 5: blocked kernels, exact and CG solves, the memory plan, features, min-norm SGD."""

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from rethinking.theory import features, kernels, min_norm

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(
    not all((DATA / f).exists() for f in ("mnist.npz", "cifar10_10k.npz")),
    reason=f"real data (mnist.npz, cifar10_10k.npz) not found in {DATA}")


def _dense_gaussian(x1, x2, bandwidth):
  d2 = ((x1[:, None, :] - x2[None, :, :])**2).sum(-1)
  return np.exp(-d2 / (2 * bandwidth**2))


def _problem(n=120, d=6, k=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, d)), rng.standard_normal((n, k))


def test_blocked_kernel_matrix_and_matvec_match_dense():
  x, v = _problem(n=37)
  x2 = x[:11] + 0.1
  k = kernels.Kernel("gaussian", 1.7)
  with kernels.precision_scope(np.float64):
    # 37 rows in blocks of 8: the last block overlaps the one before it.
    got = kernels.kernel_matrix(k, jnp.asarray(x), jnp.asarray(x2), block_size=8)
    mv = kernels.kernel_matvec(k, jnp.asarray(x), jnp.asarray(x), jnp.asarray(v), block_size=8)
    lin = kernels.kernel_matrix(kernels.Kernel("linear"), jnp.asarray(x), jnp.asarray(x),
                                block_size=8, diag_shift=0.5)
  np.testing.assert_allclose(got, _dense_gaussian(x, x2, 1.7), rtol=1e-12)
  np.testing.assert_allclose(mv, _dense_gaussian(x, x, 1.7) @ v, rtol=1e-10)
  np.testing.assert_allclose(lin, x @ x.T + 0.5 * np.eye(37), rtol=1e-12)


def test_unknown_kernel_lists_known():
  with pytest.raises(ValueError, match=r"\['gaussian', 'linear'\]"):
    kernels.Kernel("laplace")


def test_exact_solve_interpolates_in_float64_without_leaking_x64():
  x, y = _problem()
  k = kernels.Kernel("gaussian", 2.0)
  sol = kernels.solve(k, x, y)
  dense = _dense_gaussian(x, x, 2.0)
  assert sol.dtype == "float64" and sol.jitter == 0
  assert sol.residual < 1e-10
  np.testing.assert_allclose(dense @ sol.alpha, y, atol=1e-8)
  np.testing.assert_allclose(sol.norm, np.sqrt(np.sum(sol.alpha * (dense @ sol.alpha))),
                             rtol=1e-10)
  # The float64 scope is local: the rest of the process (float32 training) is untouched.
  assert jnp.zeros(1).dtype == jnp.float32


def test_l2_solves_the_ridge_system_and_shrinks_the_norm():
  x, y = _problem()
  k = kernels.Kernel("gaussian", 2.0)
  exact, ridge = kernels.solve(k, x, y), kernels.solve(k, x, y, l2=0.1)
  dense = _dense_gaussian(x, x, 2.0)
  np.testing.assert_allclose((dense + 0.1 * np.eye(len(x))) @ ridge.alpha, y, atol=1e-9)
  assert ridge.norm < exact.norm


@pytest.mark.parametrize("cg_rank", [0, 40])
def test_conjugate_gradient_agrees_with_cholesky(cg_rank):
  x, y = _problem(n=150)
  k = kernels.Kernel("gaussian", 1.5)
  chol = kernels.solve(k, x, y)
  cg = kernels.solve(k, x, y, solver="cg", cg_tol=1e-10, cg_rank=cg_rank, block_size=64)
  assert cg.residual < 1e-8
  np.testing.assert_allclose(cg.alpha, chol.alpha, rtol=0, atol=1e-6 * np.abs(chol.alpha).max())
  np.testing.assert_allclose(cg.norm, chol.norm, rtol=1e-8)


def test_nystrom_preconditioner_cuts_cg_iterations():
  # Points in 2-d: the kernel's spectrum decays fast, which is what Nystrom captures.
  x, y = _problem(n=200, d=2)
  k = kernels.Kernel("gaussian", 1.0)
  plain = kernels.solve(k, x, y, l2=1e-4, solver="cg", cg_rank=0, cg_tol=1e-8)
  pre = kernels.solve(k, x, y, l2=1e-4, solver="cg", cg_rank=50, cg_tol=1e-8)
  assert pre.residual < 1e-7
  assert pre.iterations < plain.iterations / 5


def test_memory_plan_for_full_mnist_fits_24gb_and_solves_exactly():
  # 90% of what a 24 GB machine has available (MemAvailable ~23 GB): the default budget.
  budget = int(0.9 * 23e9)
  for dim in (784, 3332):  # raw pixels, Gabor features
    plan = kernels.plan_memory(60_000, np.float64, feature_dim=dim, num_test=10_000,
                               budget_bytes=budget)
    assert plan.solver == "inplace"  # the exact path: float64 accuracy, no jitter
    assert plan.cholesky_bytes == 57_600_000_000  # float64 K and its factor: not an option
    assert plan.inplace_bytes < 17e9 and plan.peak_bytes < budget < 24e9
    assert "exact solve" in plan.describe() and "no jitter" in plan.describe()
    assert plan.inplace_bytes >= 60_000**2 * 4  # K's lower triangle in float64, 14.4 GB
    assert 60_000**2 * 2 <= plan.mixed_bytes < plan.inplace_bytes / 1.8  # ... in float32
  # A 16 GB machine: the float32 triangle, refined by CG.
  mid = kernels.plan_memory(60_000, np.float64, feature_dim=784, budget_bytes=13 * 10**9)
  assert mid.solver == "mixed" and mid.peak_bytes < 13 * 10**9
  # Too small a budget: blocked CG, K never formed.
  small = kernels.plan_memory(60_000, np.float64, feature_dim=784, budget_bytes=10 * 10**9)
  assert small.solver == "cg" and "conjugate gradient, K never formed" in small.describe()
  assert small.cg_bytes < 2 * 10**9 and small.peak_bytes < 10 * 10**9
  # Accelerators (float32 solves) have no mixed path.
  plan32 = kernels.plan_memory(60_000, np.float32, budget_bytes=20 * 10**9)
  assert plan32.kernel_bytes == 14_400_000_000 and plan32.solver == "cg"
  assert kernels.plan_memory(60_000, np.float32, budget_bytes=40 * 10**9).solver == "cholesky"
  with pytest.raises(ValueError, match="known solvers"):
    kernels.plan_memory(10, np.float32, solver="lu")


BW = 5.0  # with _clustered_problem: cond(K) ~ 3e6, like an image kernel's


def _clustered_problem(n=600, d=10, seed=0):
  """Clustered points: their Gaussian kernel at width BW is ill conditioned."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((30, d)) * 3
  x = centres[rng.integers(0, 30, n)] + 0.3 * rng.standard_normal((n, d))
  y = np.eye(10)[rng.integers(0, 10, n)]
  return x.astype(np.float32), y


def test_mixed_solver_matches_a_float64_reference_solve_without_jitter():
  x, y = _clustered_problem()
  k = kernels.Kernel("gaussian", BW)
  x64 = x.astype(np.float64)
  dense = _dense_gaussian(x64, x64, BW)
  cond = np.linalg.cond(dense)
  assert 1e5 < cond < 1e10  # float32 alone could not reach 1e-8
  sol = kernels.solve(k, x, y, solver="mixed", block_size=128)
  assert sol.solver == "mixed" and sol.dtype == "float64" and sol.alpha.dtype == np.float64
  assert sol.jitter == 0 and sol.preconditioner_shift == 0  # nothing added anywhere
  # Relative residual against the dense float64 matrix (not the solver's own products).
  res = np.linalg.norm(dense @ sol.alpha - y) / np.linalg.norm(y)
  assert res <= 1e-8 and sol.residual <= 1e-8
  assert abs(res - sol.residual) < 1e-9
  ref = np.linalg.solve(dense, y)
  # Agreement with LAPACK's float64 solve, to what the conditioning allows.
  err = np.linalg.norm(sol.alpha - ref) / np.linalg.norm(ref)
  assert err < 1e-8 * cond
  ref_chol = scipy.linalg.cho_solve(scipy.linalg.cho_factor(dense, lower=True), y)
  np.testing.assert_allclose(sol.alpha, ref_chol, rtol=0, atol=1e-8 * cond * np.abs(ref).max())
  np.testing.assert_allclose(sol.norm, np.sqrt(np.sum(ref * y)), rtol=1e-8)
  np.testing.assert_allclose(sol.train_predictions, dense @ sol.alpha, rtol=0, atol=1e-10)
  assert sol.iterations <= 12


def test_inplace_solver_is_a_float64_factor_checked_by_a_fresh_product():
  x, y = _clustered_problem()
  x64 = x.astype(np.float64)
  dense = _dense_gaussian(x64, x64, BW)
  sol = kernels.solve(kernels.Kernel("gaussian", BW), x, y, solver="inplace", block_size=128)
  assert sol.solver == "inplace" and sol.alpha.dtype == np.float64
  assert sol.jitter == 0 and sol.preconditioner_shift == 0
  assert sol.iterations <= 2  # a float64 factor of K: one solve, at most one refinement
  res = np.linalg.norm(dense @ sol.alpha - y) / np.linalg.norm(y)
  assert res <= 1e-8 and abs(res - sol.residual) < 1e-9
  ref = scipy.linalg.cho_solve(scipy.linalg.cho_factor(dense, lower=True), y)
  cond = np.linalg.cond(dense)
  np.testing.assert_allclose(sol.alpha, ref, rtol=0, atol=1e-12 * cond * np.abs(ref).max())
  # The in-place float64 factor is LAPACK's, to float64 rounding.
  c, info = kernels.factor_in_place(kernels.Kernel("gaussian", BW), x, dtype=np.float64,
                                    block_size=64)
  assert info == 0 and c.dtype == np.float64
  np.testing.assert_allclose(np.tril(c), np.linalg.cholesky(dense), rtol=0,
                             atol=1e-9 * np.sqrt(cond))


def _resident_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * kernels.PAGE


def test_lazy_square_commits_only_the_written_triangle():
  n, block = 4000, 512
  a = kernels.lazy_square(n, np.float64)  # 128 MB if every page were committed
  assert a.shape == (n, n) and a.flags.c_contiguous and a.flags.writeable
  before = _resident_bytes()
  for i0 in range(0, n, block):  # as factor_in_place writes it: row blocks from the diagonal
    a[i0:i0 + block, i0:] = 1.0
  grown = _resident_bytes() - before
  assert 0.45 * n * n * 8 < grown <= kernels.triangle_bytes(n, 8, block) + 4 * 2**20
  assert a[n - 1, 0] == 0 and a[0, n - 1] == 1  # unwritten pages read as zero


def test_mixed_solver_ridge_and_linear_kernel():
  x, y = _clustered_problem(n=300, seed=1)
  x64 = x.astype(np.float64)
  dense = _dense_gaussian(x64, x64, BW)
  ridge = kernels.solve(kernels.Kernel("gaussian", BW), x, y, l2=0.1, solver="mixed")
  ref = np.linalg.solve(dense + 0.1 * np.eye(300), y)
  assert ridge.jitter == 0 and ridge.residual <= 1e-8
  assert np.linalg.norm((dense + 0.1 * np.eye(300)) @ ridge.alpha - y) <= 1e-8 * np.linalg.norm(y)
  np.testing.assert_allclose(ridge.alpha, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
  # A linear kernel on more dimensions than points: the min-norm interpolant, X^T alpha.
  rng = np.random.default_rng(2)
  xl, yl = rng.standard_normal((40, 100)).astype(np.float32), rng.standard_normal((40, 2))
  lin = kernels.solve(kernels.Kernel("linear"), xl, yl, solver="mixed")
  assert lin.residual <= 1e-8
  np.testing.assert_allclose(xl.T.astype(np.float64) @ lin.alpha,
                             min_norm.min_norm_solution(xl.astype(np.float64), yl), rtol=1e-7)


def test_float32_factor_is_in_place_and_the_products_match_dense():
  x, y = _clustered_problem(n=257, seed=3)
  x64 = x.astype(np.float64)
  k = kernels.Kernel("gaussian", BW)
  dense = _dense_gaussian(x64, x64, BW)
  # 257 rows in blocks of 64: a ragged last block.
  c, info = kernels.factor_in_place(k, x, block_size=64)
  assert info == 0 and c.dtype == np.float32 and c.flags.f_contiguous
  low = np.tril(c).astype(np.float64)
  assert np.abs(low @ low.T - dense).max() < 1e-5  # a float32 factor of K
  v = np.random.default_rng(0).standard_normal((257, 3))
  np.testing.assert_allclose(kernels.symmetric_matvec64(k, x, v, tile=64), dense @ v,
                             rtol=0, atol=1e-12 * np.abs(dense @ v).max() * 257)
  x2 = x[:50] + 0.1
  np.testing.assert_allclose(kernels.rect_matvec64(k, x2, x, v, tile=16),
                             _dense_gaussian(x2.astype(np.float64), x64, BW) @ v, rtol=1e-12,
                             atol=1e-13)
  # A breakdown is reported, not hidden: LAPACK's info, offset to the failing column.
  bad = np.asfortranarray(np.eye(200, dtype=np.float32))
  bad[150, 150] = -1
  assert kernels.cholesky_in_place(bad, block_size=64) == 151
  with pytest.raises(ValueError, match="Fortran"):
    kernels.cholesky_in_place(np.eye(3, dtype=np.float32)[:, ::2].copy(order="C"))
  # The blocked factor is a Cholesky factor to float32 rounding (its backward error,
  # checked in float64: n * eps32 * max|K| is 3e-5 here), and solves with it are that
  # factor's solves (against float64 triangular solves with the same factor: no float32
  # path compared with another, so no CPU's rounding decides it).
  a32 = dense.astype(np.float32)
  a = np.asfortranarray(a32)
  assert kernels.cholesky_in_place(a, block_size=100) == 0
  factor = np.tril(a).astype(np.float64)
  assert np.abs(factor @ factor.T - a32).max() <= 1e-4 * np.abs(a32).max()
  r = np.random.default_rng(1).standard_normal((257, 2))
  want = scipy.linalg.cho_solve((factor, True), r)
  np.testing.assert_allclose(kernels.cholesky_solve_in_place(a, r, block_size=100), want,
                             rtol=0, atol=1e-4 * np.abs(want).max())


def test_mixed_solver_falls_back_to_a_shifted_preconditioner_not_jitter(monkeypatch):
  # Near-duplicate points: K is positive definite in float64 (cond ~2e8). Whether float32
  # Cholesky of K breaks down depends on the BLAS's rounding, so the breakdown is forced.
  x, y = _clustered_problem(n=200, seed=4)
  x = np.concatenate([x, x[:3] + np.float32(3e-3)])
  y = np.concatenate([y, y[3:6]])
  factor = kernels.factor_in_place
  def breaks_without_shift(kernel, x, *, shift=0.0, **kwargs):
    c, info = factor(kernel, x, shift=shift, **kwargs)
    return c, (info or 7) if shift == 0 else info
  monkeypatch.setattr(kernels, "factor_in_place", breaks_without_shift)
  sol = kernels.solve(kernels.Kernel("gaussian", BW), x, y, solver="mixed")
  assert sol.jitter == 0 and sol.preconditioner_shift > 0
  dense = _dense_gaussian(x.astype(np.float64), x.astype(np.float64), BW)
  assert sol.residual <= 1e-8
  assert np.linalg.norm(dense @ sol.alpha - y) / np.linalg.norm(y) <= 1e-8


def test_median_bandwidth_is_half_the_median_distance():
  x = np.random.default_rng(0).standard_normal((300, 5))
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(300, 1)]
  np.testing.assert_allclose(kernels.median_bandwidth(x), 0.5 * np.median(d), rtol=1e-6)


def test_linear_kernel_interpolant_is_the_min_norm_solution():
  rng = np.random.default_rng(4)
  x, y = rng.standard_normal((40, 100)), rng.standard_normal((40, 2))
  sol = kernels.solve(kernels.Kernel("linear"), x, y)
  np.testing.assert_allclose(x.T @ sol.alpha, min_norm.min_norm_solution(x, y), rtol=1e-8)


def test_sgd_from_zero_reaches_the_min_norm_solution():
  rng = np.random.default_rng(5)
  x, y = rng.standard_normal((50, 200)), rng.standard_normal(50)
  w_star = min_norm.min_norm_solution(x, y)
  w = min_norm.sgd_least_squares(x, y, num_epochs=30)
  assert min_norm.relative_difference(w, w_star) < 1e-3
  # From elsewhere SGD still interpolates but keeps w0's part outside the row space.
  w0 = rng.standard_normal(200)
  w_far = min_norm.sgd_least_squares(x, y, num_epochs=30, w0=w0)
  null_part = w0 - x.T @ np.linalg.solve(x @ x.T, x @ w0)
  assert np.abs(x @ w_far - y).max() < 1e-3
  assert min_norm.relative_difference(w_far, w_star + null_part) < 1e-3
  assert min_norm.relative_difference(w_far, w_star) > 0.5


def test_ridge_approaches_the_min_norm_solution():
  rng = np.random.default_rng(6)
  x, y = rng.standard_normal((30, 80)), rng.standard_normal((30, 2))
  w_star = min_norm.min_norm_solution(x, y)
  gaps = [min_norm.relative_difference(min_norm.ridge_solution(x, y, l2), w_star)
          for l2 in (10.0, 1.0, 1e-2, 1e-4, 1e-6)]
  assert all(a > b for a, b in zip(gaps, gaps[1:]))
  assert gaps[-1] < 1e-6


def test_morlet_filters_have_zero_mean():
  psi = features.morlet_filters(36, 2, 8)
  assert np.abs(psi.sum(axis=(1, 2))).max() < 1e-10
  assert abs(features.gaussian_filter(36, 3.2).sum() - 1) < 1e-12


@needs_data
def test_random_conv_features_ignore_brightness():
  ds = features.load_subsets(str(DATA / "cifar10_10k.npz"), 40, 10)
  featurize = features.make_features("random_conv", ds.x_train, num_filters=16, seed=0)
  dark = (ds.x_test // 2).astype(np.uint8)
  f = featurize(dark)
  assert f.shape == (10, 8 * 16) and np.all(np.isfinite(f)) and f.max() > 0
  # Each patch is normalised for brightness, so adding a constant changes nothing.
  np.testing.assert_allclose(featurize(dark + 60), f, rtol=1e-3, atol=1e-3 * f.max())
  gabor = features.make_features("gabor", ds.x_train)(ds.x_test)
  assert gabor.shape == (10, 17 * 16 * 16) and np.all(np.isfinite(gabor))


@needs_data
def test_gaussian_kernel_on_2000_mnist_digits_beats_90_percent():
  ds = features.load_subsets(str(DATA / "mnist.npz"), 2000, 1000)
  raw = features.make_features("raw", ds.x_train)
  x, x_test = raw(ds.x_train), raw(ds.x_test)
  k = kernels.Kernel("gaussian", kernels.median_bandwidth(x))
  sol = kernels.solve(k, x, np.eye(10)[ds.y_train])
  assert sol.residual < 1e-8
  error = kernels.classification_error(kernels.predict(k, x, sol.alpha, x_test), ds.y_test)
  assert error < 0.10


@needs_data
def test_command_line_writes_json(tmp_path):
  out = tmp_path / "result.json"
  proc = subprocess.run([sys.executable, "-m", "rethinking.kernels",
                         f"--dataset={DATA / 'mnist.npz'}", "--num_train=200", "--num_test=100",
                         "--features=gabor", "--l2=1e-3", f"--out={out}"], check=True,
                        cwd=REPO, capture_output=True, text=True)
  assert "memory plan: kernel matrix 200 x 200" in proc.stdout
  result = json.loads(out.read_text())
  assert result["num_train"] == 200 and result["num_test"] == 100
  assert result["solver"] == "cholesky" and result["residual"] < 1e-8
  assert 0 <= result["test_error"] < 0.5 and result["norm"] > 0
  assert result["memory"]["kernel_bytes"] == 200 * 200 * 8
  assert {"time_s", "feature_dim", "bandwidth", "gamma", "train_error"} <= result.keys()
  assert result["jitter"] == 0 and result["preconditioner_shift"] == 0
  assert 0 < result["memory"]["peak_rss_bytes"] < 4e9
