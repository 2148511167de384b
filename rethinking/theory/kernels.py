"""Section 5: solve K alpha = Y exactly and measure the minimum norm (Table 3).

The interpolant f(x) = sum_i alpha_i k(x_i, x) with K alpha = Y is the minimum RKHS-norm
function that fits the training labels; its norm is sqrt(trace(alpha^T K alpha)).

Precision. An exact solve of a Gaussian kernel matrix is ill conditioned, so on CPU the
solve runs in float64. Rather than flipping `jax_enable_x64` for the whole process
(which would turn the float32 training code's arrays into float64), every function
here that computes in float64 does so inside `jax.enable_x64(True)`, a thread-local
context manager, and hands numpy arrays back. On accelerators the solve is float32;
when the Cholesky factorisation breaks down, a growing multiple of the identity (the
"jitter", reported) is added. Dot products ask for `Precision.HIGHEST` so that GPUs
do not use TF32, whose 10-bit mantissa would wreck |x|^2 + |y|^2 - 2<x, y>.

Memory. K for n points takes n^2 x itemsize bytes (60k MNIST: 28.8 GB in float64, 14.4 GB
in float32). The float64 Cholesky path holds K and its factor (57.6 GB at 60k). The
"inplace" path holds only K's lower triangle in float64 (14.4 GB at 60k: an n x n array
whose pages are committed only where written, `lazy_square`), factors it in place by a
blocked Cholesky, and checks the answer with a fresh float64 product with K recomputed
from the features (refining once more if the relative residual is above 1e-8). The
"mixed" path does the same in float32 (7.2 GB at 60k); that float32 factor preconditions
conjugate gradient on the float64 system, whose products with K are recomputed the same
way, so the answer also has float64 accuracy with no jitter, at one product per
iteration. `plan_memory` says what each path costs before anything is allocated and picks
one; over budget for all, the solver is conjugate gradient with a blocked matrix-vector
product that never holds more than `block_size` rows of K.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import mmap
import os
import resource
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg.lapack
from jax import lax

HIGHEST = lax.Precision.HIGHEST


def gaussian(x1: jax.Array, x2: jax.Array, bandwidth: float) -> jax.Array:
  """k(x, y) = exp(-|x - y|^2 / (2 bandwidth^2)) between the rows of x1 and x2."""
  sq = (jnp.sum(x1 * x1, axis=1)[:, None] + jnp.sum(x2 * x2, axis=1)[None, :]
        - 2 * jnp.dot(x1, x2.T, precision=HIGHEST))
  return jnp.exp(-jnp.maximum(sq, 0) / (2 * bandwidth**2))


def linear(x1: jax.Array, x2: jax.Array, bandwidth: float) -> jax.Array:
  """k(x, y) = <x, y>; `bandwidth` is ignored (the registry's common signature)."""
  del bandwidth
  return jnp.dot(x1, x2.T, precision=HIGHEST)


KERNELS = {"gaussian": gaussian, "linear": linear}


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A kernel by name with its bandwidth; hashable, so jitted functions take it statically."""

  name: str
  bandwidth: float = 1.0

  def __post_init__(self):
    if self.name not in KERNELS:
      raise ValueError(f"kernel={self.name!r}: unknown; known kernels are {sorted(KERNELS)}")
    if not self.bandwidth > 0:
      raise ValueError(f"bandwidth={self.bandwidth}: must be positive")

  def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
    return KERNELS[self.name](x1, x2, self.bandwidth)


MEDIAN_SCALE = 0.5  # sigma = MEDIAN_SCALE x the median distance


def median_bandwidth(x: np.ndarray, num_samples: int = 2000, seed: int = 0,
                     scale: float = MEDIAN_SCALE) -> float:
  """sigma = scale x the median distance between points (the median heuristic).

  The median is over pairs of a seeded sample of `num_samples` rows. At the default
  scale 0.5, 2 sigma^2 = median |x_i - x_j|^2 / 2: a typical pair has k(x, y) = e^-2.
  On MNIST pixels in [0, 1] the median squared distance is 105, so gamma = 1 / (2 sigma^2)
  = 0.019, next to the gamma = 0.02 that gives 1.22% test error on all 60k (the paper's
  1.2%). Measured on class-balanced subsets (all test images; gamma = c / median):

    MNIST raw, n = 20,000: c = 1: 2.02%, c = 2: 1.83% (gamma 0.02)
    MNIST Gabor, n = 5,000: c = 1: 1.16%, 1.5: 1.25%, 2: 1.26%, 3: 1.42%
    CIFAR-10 raw, n = 5,000: c = 1: 61.8%, 1.5: 60.7%, 2: 59.3%, 3: 57.5%

  A narrower kernel is also better conditioned, which the mixed solver's float32
  preconditioner needs (MNIST Gabor at n = 5,000: 6 CG iterations at c = 2, 11 at c = 1).
  """
  x = np.asarray(x, np.float64)
  if x.shape[0] > num_samples:
    x = x[np.random.default_rng(seed).choice(x.shape[0], num_samples, replace=False)]
  sq = np.sum(x * x, 1)
  d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)[np.triu_indices(x.shape[0], 1)]
  med = float(np.median(d2)) if d2.size else 0.0
  return scale * math.sqrt(med) if med > 0 else 1.0


def solve_dtype(platform: str | None = None) -> np.dtype:
  """float64 on CPU (LAPACK is fast there and K is ill conditioned); float32 elsewhere."""
  platform = platform or jax.default_backend()
  return np.dtype(np.float64 if platform == "cpu" else np.float32)


def precision_scope(dtype) -> contextlib.AbstractContextManager:
  """Enables 64-bit JAX types for this thread only, and only when dtype needs them."""
  return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def map_row_blocks(f: Callable[[jax.Array], jax.Array], x: jax.Array, num_cols: int,
                   block_size: int, dtype) -> jax.Array:
  """[f(x[i:i+B]) for each block of B rows], stacked into [N, num_cols]; call under jit.

  Every block has the same shape (the last one starts at N - B and recomputes a few
  rows), so f compiles once and only one block's intermediates are alive at a time.
  """
  n = x.shape[0]
  bs = min(block_size, n)

  def body(i, out):
    start = jnp.minimum(i * bs, n - bs)
    block = f(lax.dynamic_slice_in_dim(x, start, bs, axis=0)).astype(dtype)
    return lax.dynamic_update_slice_in_dim(out, block, start, axis=0)

  return lax.fori_loop(0, -(-n // bs), body, jnp.zeros((n, num_cols), dtype))


@functools.partial(jax.jit, static_argnames=("kernel", "block_size"))
def kernel_matrix(kernel: Kernel, x1: jax.Array, x2: jax.Array, *, block_size: int = 1024,
                  diag_shift: float | jax.Array = 0.0) -> jax.Array:
  """K(x1, x2) [N1, N2] built a block of rows at a time, plus diag_shift on the diagonal."""
  k = map_row_blocks(lambda xb: kernel(xb, x2), x1, x2.shape[0], block_size, x1.dtype)
  idx = jnp.arange(min(k.shape))
  return k.at[idx, idx].add(diag_shift)


@functools.partial(jax.jit, static_argnames=("kernel", "block_size"))
def kernel_matvec(kernel: Kernel, x1: jax.Array, x2: jax.Array, v: jax.Array, *,
                  block_size: int = 1024) -> jax.Array:
  """K(x1, x2) @ v [N1, k] without forming K: memory block_size x N2."""
  return map_row_blocks(lambda xb: jnp.dot(kernel(xb, x2), v, precision=HIGHEST), x1,
                        v.shape[1], block_size, v.dtype)


def available_memory_bytes(device: jax.Device | None = None) -> int:
  """Free memory on an accelerator, or the host's MemAvailable for the CPU backend."""
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_memory_budget(device: jax.Device | None = None) -> int:
  """80% of an accelerator's free memory; 90% of the host's available memory on CPU.

  On CPU the budget is what the kernel solve may take of the memory available when it is
  planned (MemAvailable: free plus reclaimable cache), less a margin for the rest of the
  process and for other programs' growth.
  """
  device = device or jax.devices()[0]
  fraction = 0.9 if device.platform == "cpu" else 0.8
  return int(fraction * available_memory_bytes(device))


# Bytes the process holds besides the solve's arrays: Python, JAX/XLA, the uint8 data.
RUNTIME_BYTES = 1_000_000_000
MIXED_TILE = 2048  # rows and columns of the float64 tiles of K the mixed solver recomputes
PAGE = 4096
# Linux's MAP_NORESERVE (the same on x86 and ARM), which Python's mmap names only from 3.13.
_NORESERVE = 0x4000 if os.uname().sysname == "Linux" else 0


def lazy_square(n: int, dtype) -> np.ndarray:
  """An uninitialised n x n C-order array whose memory is committed page by page as it is
  written, so that a triangle of it costs half of n^2 x itemsize.

  An anonymous mapping with transparent huge pages turned off: numpy's own large arrays
  ask for 2 MB pages, and every 2 MB of a 60,000-column float32 array holds part of the
  written half of some row, so all of it would be resident. Unwritten pages read as zero.
  MAP_NORESERVE: Linux's default overcommit heuristic refuses one mapping larger than RAM
  (60k in float64: 28.8 GB on a 24 GB machine) unless it reserves no swap up front.
  """
  itemsize = np.dtype(dtype).itemsize
  flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", _NORESERVE)
  try:
    buf = mmap.mmap(-1, max(n * n * itemsize, 1), flags=flags)
  except OSError as e:
    raise MemoryError(f"cannot map an {n:,} x {n:,} {np.dtype(dtype).name} array "
                      f"({n * n * itemsize / 1e9:.1f} GB of address space, half of it "
                      f"written): {e.strerror}; try --solver=mixed or --solver=cg") from e
  if hasattr(mmap, "MADV_NOHUGEPAGE"):
    buf.madvise(mmap.MADV_NOHUGEPAGE)
  return np.frombuffer(buf, dtype, count=n * n).reshape(n, n)


def triangle_bytes(n: int, itemsize: int, block_size: int) -> int:
  """What K's upper triangle in a `lazy_square` commits: row i from the start of its block
  of rows (so that the diagonal blocks are whole), and a page more per row."""
  b = min(block_size, n)
  return (n * n + n * b) // 2 * itemsize + n * PAGE


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """How the solve will use memory, decided before anything large is allocated.

  Attributes:
    num_train: n, the side of K.
    dtype: the solve's dtype name.
    kernel_bytes: n^2 x itemsize, K itself in the solve's dtype.
    cholesky_bytes: what the direct Cholesky in the solve's dtype holds at its peak: K
      and its factor.
    inplace_bytes: what the in-place float64 solver holds: K's lower triangle in float64
      (then its factor, in place), panels of rows being written or updated, float64
      tiles of K for the checking product and the n x k vectors.
    mixed_bytes: the same with the triangle and panels in float32, plus the vectors of
      conjugate gradient.
    block_bytes: one block of rows of K.
    cg_bytes: what conjugate gradient holds: a block of rows of K and three
      n x cg_rank matrices for the Nystrom preconditioner.
    feature_bytes: the train and test features (float32) and their float64 copies held
      while K is built or applied.
    runtime_bytes: the rest of the process (interpreter, JAX, the raw images).
    budget_bytes: the budget the plan was made against.
    solver: "cholesky", "inplace", "mixed" or "cg".
    peak_bytes: the chosen solver's bytes plus features and runtime: the planned peak of
      the process's resident memory.
  """

  num_train: int
  dtype: str
  kernel_bytes: int
  cholesky_bytes: int
  inplace_bytes: int
  mixed_bytes: int
  block_bytes: int
  cg_bytes: int
  feature_bytes: int
  runtime_bytes: int
  budget_bytes: int
  solver: str
  peak_bytes: int

  def describe(self) -> str:
    n, gb = self.num_train, 1e9
    head = (f"kernel matrix {n:,} x {n:,} {self.dtype} = {self.kernel_bytes / gb:.2f} GB; "
            f"{self.dtype} Cholesky holds K and its factor, {self.cholesky_bytes / gb:.2f} GB; "
            f"float64 Cholesky of one triangle in place, {self.inplace_bytes / gb:.2f} GB; "
            f"float32 Cholesky in place + float64 CG, {self.mixed_bytes / gb:.2f} GB; "
            f"features {self.feature_bytes / gb:.2f} GB; budget {self.budget_bytes / gb:.2f} GB"
            f" -> ")
    tail = (f"; planned peak {self.peak_bytes / gb:.2f} GB with features and "
            f"{self.runtime_bytes / gb:.1f} GB runtime")
    if self.solver == "cholesky":
      return head + f"exact {self.dtype} Cholesky solve" + tail
    if self.solver == "inplace":
      return head + ("exact solve: K's lower triangle in float64, Cholesky-factored in place, "
                     "checked by a float64 product that recomputes K from the features "
                     "(float64 accuracy, no jitter)") + tail
    if self.solver == "mixed":
      return head + ("exact solve: K's lower triangle in float32, Cholesky-factored "
                     "in place, preconditioning float64 conjugate gradient that recomputes K "
                     "from the features (float64 accuracy, no jitter)") + tail
    over = (" - over budget too: lower --block_size or --cg_rank"
            if self.peak_bytes > self.budget_bytes else "")
    return head + (f"conjugate gradient, K never formed ({self.cg_bytes / gb:.3f} GB: "
                   f"row blocks and the preconditioner{over})") + tail


SOLVERS = ("auto", "cholesky", "inplace", "mixed", "cg")


def plan_memory(num_train: int, dtype, *, feature_dim: int = 0, num_test: int = 0,
                num_outputs: int = 10, budget_bytes: int | None = None, solver: str = "auto",
                block_size: int = 1024, cg_rank: int = 1000) -> MemoryPlan:
  """Chooses the direct Cholesky, else an in-place one, else conjugate gradient.

  "auto" takes the first that fits the budget (features and runtime included): the
  direct Cholesky in `dtype` (K and its factor), then, when `dtype` is float64, the
  in-place float64 Cholesky of K's lower triangle, then the mixed solver (that triangle
  in float32; see `mixed_solve`), then conjugate gradient.

  Args:
    num_train: n.
    dtype: the solve's dtype.
    feature_dim: d, the feature dimension (0: features not counted).
    num_test: test points whose features are held alongside.
    num_outputs: k, the columns of Y.
    budget_bytes: None or <= 0 for `default_memory_budget()`.
    solver: "auto", or "cholesky"/"inplace"/"mixed"/"cg" to force one (the plan still
      reports bytes).
    block_size: rows of K per block in the blocked products.
    cg_rank: rank of CG's Nystrom preconditioner.
  """
  if solver not in SOLVERS:
    raise ValueError(f"solver={solver!r}: unknown; known solvers are {list(SOLVERS)}")
  n, d, k = num_train, feature_dim, num_outputs
  itemsize = np.dtype(dtype).itemsize
  kernel_bytes = n * n * itemsize
  if budget_bytes is None or budget_bytes <= 0:
    budget_bytes = default_memory_budget()
  block_bytes = min(block_size, n) * n * itemsize
  # float32 features of train and test, and the float64 copy the solve makes of the train set.
  feature_bytes = (n + num_test) * d * 4 + n * d * itemsize
  tile = min(MIXED_TILE, n)
  products = 3 * tile * tile * 8 + 2 * tile * d * 8  # float64 tiles of K and of features

  def in_place(size: int) -> int:  # K's lower triangle in `size`-byte floats, factored
    return (triangle_bytes(n, size, block_size)
            + 3 * min(block_size, n) * n * size)  # panels of rows being written or updated

  inplace_bytes = in_place(8) + products + 4 * n * k * 8
  mixed_bytes = in_place(4) + products + 12 * n * k * 8  # CG's vectors
  cg_bytes = block_bytes + 3 * n * min(cg_rank, n) * itemsize
  costs = {"cholesky": 2 * kernel_bytes + 2 * block_bytes, "inplace": inplace_bytes,
           "mixed": mixed_bytes, "cg": cg_bytes}
  fixed = feature_bytes + RUNTIME_BYTES
  if solver == "auto":
    candidates = (["cholesky", "inplace", "mixed"] if np.dtype(dtype) == np.float64
                  else ["cholesky"])
    solver = next((s for s in candidates if costs[s] + fixed <= budget_bytes), "cg")
  return MemoryPlan(num_train=n, dtype=np.dtype(dtype).name, kernel_bytes=kernel_bytes,
                    cholesky_bytes=2 * kernel_bytes, inplace_bytes=inplace_bytes,
                    mixed_bytes=mixed_bytes,
                    block_bytes=block_bytes, cg_bytes=cg_bytes, feature_bytes=feature_bytes,
                    runtime_bytes=RUNTIME_BYTES, budget_bytes=int(budget_bytes), solver=solver,
                    peak_bytes=costs[solver] + fixed)


def peak_rss_bytes() -> int:
  """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclasses.dataclass(frozen=True)
class KernelSolution:
  """alpha with (K + l2 I) alpha ~= Y, and how well it was solved.

  Attributes:
    alpha: [n, k] coefficients (numpy, the solve's dtype).
    train_predictions: [n, k] K alpha, the interpolant on the training points.
    residual: |(K + l2 I) alpha - Y|_F / |Y|_F, from a fresh product with K.
    norm: sqrt(trace(alpha^T K alpha)), the RKHS norm of the interpolant.
    solver: "cholesky", "inplace", "mixed" or "cg".
    dtype: the solve's dtype name.
    jitter: what Cholesky added to the diagonal beyond l2 (0 when none was needed; the
      in-place and mixed solvers never add any).
    iterations: conjugate-gradient iterations (0 for Cholesky; for the in-place solver,
      the refinement rounds, each one solve with the factor and one product with K).
    preconditioner_shift: in-place and mixed solvers: the shift added to the copy of K
      whose factor preconditions CG, when the Cholesky of K itself broke down (0 when
      it did not). The system solved is still K + l2 I.
  """

  alpha: np.ndarray
  train_predictions: np.ndarray
  residual: float
  norm: float
  solver: str
  dtype: str
  jitter: float
  iterations: int
  preconditioner_shift: float = 0.0


def solve(kernel: Kernel, x: np.ndarray, y: np.ndarray, *, l2: float = 0.0,
          solver: str = "cholesky", dtype=None, block_size: int = 1024,
          cg_tol: float = 1e-6, cg_max_iters: int = 10_000, cg_rank: int = 1000,
          seed: int = 0) -> KernelSolution:
  """Solves (K + l2 I) alpha = Y for K = kernel(x, x).

  Args:
    kernel: the kernel.
    x: [n, d] training features.
    y: [n] or [n, k] targets (one-hot labels for classification).
    l2: ridge penalty; 0 interpolates exactly, as in the paper.
    solver: "cholesky" (forms K and its factor), "inplace" (float64 factor of K's lower
      triangle in place, checked with a fresh product), "mixed" (float32 factor in place,
      refined to float64 accuracy by CG; see `mixed_solve`) or "cg" (blocked, never forms
      K); see `plan_memory`.
    dtype: the solve's dtype; None for `solve_dtype()`.
    block_size: rows of K per block.
    cg_tol: stop CG when every column's relative residual is below this (the mixed
      solver stops at min(cg_tol, MIXED_TOL)).
    cg_max_iters: CG's iteration cap.
    cg_rank: rank of the Nystrom preconditioner for CG; 0 for plain CG.
    seed: seed of the preconditioner's landmark points.

  Returns:
    A `KernelSolution`; the residual and norm come from a blocked product with K
    after the solve, so they check the solver rather than restate it.
  """
  dtype = np.dtype(dtype or solve_dtype())
  y2 = np.asarray(y).reshape(len(y), -1)
  if solver in ("inplace", "mixed"):
    if dtype != np.float64:
      raise ValueError(f"solver={solver!r} solves to float64 accuracy; dtype={dtype.name}")
    return mixed_solve(kernel, x, y2, l2=l2, tol=min(cg_tol, MIXED_TOL),
                       max_iters=min(cg_max_iters, 500), block_size=block_size,
                       factor_dtype=np.float64 if solver == "inplace" else np.float32)
  with precision_scope(dtype):
    xj, yj = jnp.asarray(x, dtype), jnp.asarray(y2, dtype)
    if solver == "cholesky":
      make = lambda shift: kernel_matrix(kernel, xj, xj, block_size=block_size, diag_shift=shift)
      alpha, jitter = cholesky_solve(make, l2, yj)
      iterations = 0
    elif solver == "cg":
      matvec = lambda v: kernel_matvec(kernel, xj, xj, v, block_size=block_size) + l2 * v
      precondition = nystrom_preconditioner(kernel, xj, cg_rank, shift=l2, seed=seed,
                                            block_size=block_size) if cg_rank else None
      alpha, iterations = conjugate_gradient(matvec, yj, precondition=precondition, tol=cg_tol,
                                             max_iters=cg_max_iters)
      jitter = 0.0
    else:
      raise ValueError(f"solver={solver!r}: expected one of {list(SOLVERS[1:])}")
    ka = kernel_matvec(kernel, xj, xj, alpha, block_size=block_size)
    residual = jnp.linalg.norm(ka + l2 * alpha - yj) / jnp.linalg.norm(yj)
    norm = jnp.sqrt(jnp.maximum(jnp.sum(alpha * ka), 0))
    return KernelSolution(alpha=np.asarray(alpha), train_predictions=np.asarray(ka),
                          residual=float(residual), norm=float(norm), solver=solver,
                          dtype=dtype.name, jitter=float(jitter), iterations=int(iterations))


def _np_kernel(kernel: Kernel, a: np.ndarray, b: np.ndarray, sq_a: np.ndarray,
               sq_b: np.ndarray) -> np.ndarray:
  """K(a, b) in a's dtype with numpy/BLAS, in place on the Gram matrix (one temporary).

  sq_a, sq_b: the squared norms of the rows of a and b (gaussian only).
  """
  g = a @ b.T
  if kernel.name == "linear":
    return g
  if kernel.name != "gaussian":
    raise ValueError(f"kernel={kernel.name!r}: the mixed solver knows gaussian and linear")
  g *= -2
  g += sq_a[:, None]
  g += sq_b[None, :]
  np.maximum(g, 0, out=g)
  g *= -1 / (2 * kernel.bandwidth**2)
  return np.exp(g, out=g)


def _centred64(x: np.ndarray, mean: np.ndarray | None, start: int, stop: int) -> np.ndarray:
  """x[start:stop] in float64, less `mean` (distances are translation invariant, and
  centred features lose less to cancellation in |x|^2 + |y|^2 - 2 <x, y>)."""
  rows = np.asarray(x[start:stop], np.float64)
  return rows if mean is None else rows - mean


def _centre_and_norms(kernel: Kernel, x: np.ndarray, tile: int):
  """The mean used for centring (None for the linear kernel) and the centred squared norms."""
  mean = np.mean(x, axis=0, dtype=np.float64) if kernel.name == "gaussian" else None
  sq = np.concatenate([np.einsum("ij,ij->i", r, r) for r in
                       (_centred64(x, mean, i, i + tile) for i in range(0, x.shape[0], tile))])
  return mean, sq


def symmetric_matvec64(kernel: Kernel, x: np.ndarray, v: np.ndarray, *,
                       tile: int = MIXED_TILE) -> np.ndarray:
  """K(x, x) @ v in float64 from the features, never holding more than a tile of K.

  Visits the tiles on and below the diagonal once each (K is symmetric: an off-diagonal
  tile serves both of its blocks), so a product costs n^2 d multiply-adds; the tiles'
  features are converted to float64 (and centred) as they are used (x may be float32).
  """
  n = x.shape[0]
  v = np.asarray(v, np.float64)
  out = np.zeros(v.shape, np.float64)
  mean, sq = _centre_and_norms(kernel, x, tile)
  for i0 in range(0, n, tile):
    i1 = min(n, i0 + tile)
    xi = _centred64(x, mean, i0, i1)
    for j0 in range(0, i0 + 1, tile):
      j1 = min(n, j0 + tile)
      xj = xi if j0 == i0 else _centred64(x, mean, j0, j1)
      kij = _np_kernel(kernel, xi, xj, sq[i0:i1], sq[j0:j1])
      out[i0:i1] += kij @ v[j0:j1]
      if j0 != i0:
        out[j0:j1] += kij.T @ v[i0:i1]
  return out


def rect_matvec64(kernel: Kernel, x1: np.ndarray, x2: np.ndarray, v: np.ndarray, *,
                  tile: int = MIXED_TILE) -> np.ndarray:
  """K(x1, x2) @ v in float64 [N1, k], a tile of rows at a time (numpy/BLAS)."""
  v = np.asarray(v, np.float64)
  mean, sq2 = _centre_and_norms(kernel, x2, tile)
  out = np.zeros((x1.shape[0], v.shape[1]), np.float64)
  for j0 in range(0, x2.shape[0], 4 * tile):
    j1 = min(x2.shape[0], j0 + 4 * tile)
    xj = _centred64(x2, mean, j0, j1)
    for i0 in range(0, x1.shape[0], tile):
      i1 = min(x1.shape[0], i0 + tile)
      xi = _centred64(x1, mean, i0, i1)
      out[i0:i1] += _np_kernel(kernel, xi, xj, np.einsum("ij,ij->i", xi, xi),
                               sq2[j0:j1]) @ v[j0:j1]
  return out


def cholesky_in_place(a: np.ndarray, *, block_size: int = 1024) -> int:
  """Overwrites the lower triangle of the Fortran-order a with L, a = L L^T; returns info.

  Left-looking and blocked, for any n: panel j gets
  a[j0:, j0:j1] -= a[j0:, :j0] a[j0:j1, :j0]^T in one matrix product on strided views
  (numpy hands them to its BLAS without copies, with 64-bit indices; scipy's spotrf on
  the whole array segfaulted at n = 60,000: n^2 > 2^31, and scipy's LAPACK is 32-bit), then
  LAPACK factors the block_size x block_size diagonal block and a triangular solve
  finishes the panel. Only the lower triangle (and the diagonal blocks' upper halves) is
  read or written. Temporaries: a few block_size x n panels.

  Returns:
    0 on success, j > 0 when the leading j x j minor is not positive definite.
  """
  n = a.shape[0]
  if not a.flags.f_contiguous:
    raise ValueError("cholesky_in_place needs a Fortran-order array")
  potrf, = scipy.linalg.lapack.get_lapack_funcs(("potrf",), (a,))
  start = last_log = time.time()
  for j0 in range(0, n, block_size):
    j1 = min(n, j0 + block_size)
    if time.time() - last_log > 60:
      f = j0 / n  # panel j costs ~ (n - j0) j0 block_size: done = 3 f^2 - 2 f^3
      done = 3 * f**2 - 2 * f**3
      logging.info("Cholesky: column %d of %d (%.0f%% of the work) after %.0f s", j0, n,
                   100 * done, time.time() - start)
      last_log = time.time()
    if j0:
      # The update's transpose comes out C-ordered, i.e. in the panel's own (F) layout.
      update_t = a[j0:j1, :j0] @ a[j0:, :j0].T
      a[j0:, j0:j1] -= update_t.T
      del update_t
    diag, info = potrf(a[j0:j1, j0:j1], lower=1, clean=1)
    if info:
      return j0 + int(info)
    a[j0:j1, j0:j1] = diag
    if j1 < n:  # panel below: P <- P L_jj^-T, i.e. P^T <- L_jj^-1 P^T
      a[j1:, j0:j1] = scipy.linalg.solve_triangular(
          diag, a[j1:, j0:j1].T, lower=True, check_finite=False).T
  return 0


def cholesky_solve_in_place(c: np.ndarray, r: np.ndarray, *,
                            block_size: int = 1024) -> np.ndarray:
  """(L L^T)^-1 r for L in the lower triangle of the Fortran-order c, blockwise."""
  n = c.shape[0]
  z = np.array(r, c.dtype, copy=True)
  starts = list(range(0, n, block_size))
  for j0 in starts:  # L z = r
    j1 = min(n, j0 + block_size)
    if j0:
      z[j0:j1] -= c[j0:j1, :j0] @ z[:j0]
    z[j0:j1] = scipy.linalg.solve_triangular(c[j0:j1, j0:j1], z[j0:j1], lower=True,
                                             check_finite=False)
  for j0 in reversed(starts):  # L^T x = z
    j1 = min(n, j0 + block_size)
    if j1 < n:
      z[j0:j1] -= c[j1:, j0:j1].T @ z[j1:]
    z[j0:j1] = scipy.linalg.solve_triangular(c[j0:j1, j0:j1], z[j0:j1], lower=True, trans=1,
                                             check_finite=False)
  return z


def factor_in_place(kernel: Kernel, x: np.ndarray, *, dtype=np.float32, shift: float = 0.0,
                    block_size: int = 1024) -> tuple[np.ndarray, int]:
  """K(x, x) + shift I in `dtype`, Cholesky-factored in place: (factor, info).

  One n x n array `a` (C order, `lazy_square`) is allocated; row block i of its upper
  triangle, a[i0:i1, i0:], gets K(x[i0:i1], x[i0:]) (BLAS in `dtype`), so a.T, a
  Fortran-order view, holds K's lower triangle, which `cholesky_in_place` overwrites with
  L, K = L L^T. The other triangle is never written, so never committed: n^2 / 2 x
  itemsize bytes (60k: 14.4 GB in float64, 7.2 GB in float32).

  Returns:
    (the Fortran-order n x n view whose lower triangle is L, info: 0 on success, j > 0
    when the leading j x j minor is not positive definite in `dtype`).
  """
  dtype = np.dtype(dtype)
  if kernel.name == "gaussian":
    # Distances do not change under translation; centred features lose less of them to
    # cancellation in |x|^2 + |y|^2 - 2 <x, y>.
    xc = np.asarray(x - np.mean(x, axis=0, dtype=np.float64), dtype)
  else:
    xc = np.asarray(x, dtype)
  n = xc.shape[0]
  sq = np.einsum("ij,ij->i", xc, xc)
  a = lazy_square(n, dtype)
  start = time.time()
  for i0 in range(0, n, block_size):
    i1 = min(n, i0 + block_size)
    a[i0:i1, i0:] = _np_kernel(kernel, xc[i0:i1], xc[i0:], sq[i0:i1], sq[i0:])
    if shift:
      idx = np.arange(i0, i1)
      a[idx, idx] += dtype.type(shift)
  del xc
  logging.info("%s lower triangle of K written in %.0f s", dtype.name, time.time() - start)
  info = cholesky_in_place(a.T, block_size=block_size)
  return a.T, info


MIXED_TOL = 3e-9  # CG's stopping residual (max over columns), below the 1e-8 reported
MIXED_TARGET = 1e-8  # the true relative residual the mixed solver guarantees or reports


def mixed_solve(kernel: Kernel, x: np.ndarray, y: np.ndarray, *, l2: float = 0.0,
                tol: float = MIXED_TOL, max_iters: int = 200, block_size: int = 1024,
                max_restarts: int = 2, factor_dtype=np.float32) -> KernelSolution:
  """Solves (K + l2 I) alpha = Y to float64 accuracy holding one triangle of K, once.

  K's Cholesky factor L in `factor_dtype` (`factor_in_place`) makes M = L L^T ~ K up to
  that dtype's rounding.
  - float64 (the "inplace" solver): M is K to float64 rounding, so alpha = M^-1 Y is the
    answer; one product with K, recomputed from the features in float64 a tile at a time
    (`symmetric_matvec64`), checks it, and iterative refinement (alpha += M^-1 r) repeats
    while the residual is above MIXED_TARGET. Cost: the factor and one product, however
    ill conditioned K is (MNIST Gabor 60k: each product is 12 TFLOP at 3,332 dims).
  - float32 (the "mixed" solver): conjugate gradient on the float64 system preconditioned
    by M^-1 (two blocked float32 triangular solves) needs few iterations (MNIST raw 60k:
    5, Gabor 10k: 12), each a float64 product with K; a fresh product checks the answer
    and CG restarts on what remains (at most `max_restarts` times).
  No jitter is added to the system. If the Cholesky of K breaks down, the preconditioner
  is the factor of K + s I for the smallest s = mean(diag K) x 10^e (e = -7, -6, ...) that
  factors, and CG (also for the float64 factor) takes more iterations; the solution is
  still that of K + l2 I. The returned residual |(K + l2 I) alpha - Y|_F / |Y|_F is from
  a fresh float64 product.
  """
  start = time.time()
  y = np.asarray(y, np.float64)
  n = x.shape[0]
  mean_diag = 1.0 if kernel.name == "gaussian" else float(
      np.mean(np.einsum("ij,ij->i", x, x, dtype=np.float64)))
  preconditioner_shift = 0.0
  factor = functools.partial(factor_in_place, kernel, x, dtype=factor_dtype,
                             block_size=block_size)
  c, info = factor(shift=l2)
  for e in range(-7, 0):
    if info == 0:
      break
    del c
    preconditioner_shift = mean_diag * 10.0**e
    logging.warning("%s Cholesky of K broke down at column %d; preconditioning with "
                    "K + %.3g I instead (the system solved is unchanged)",
                    np.dtype(factor_dtype).name, info, preconditioner_shift)
    c, info = factor(shift=l2 + preconditioner_shift)
  if info:
    raise np.linalg.LinAlgError(f"{np.dtype(factor_dtype).name} Cholesky failed even with a "
                                "shift of 10% of diag K")
  logging.info("%s Cholesky of %d x %d done in %.0f s", c.dtype.name, n, n,
               time.time() - start)
  # A float64 factor of K itself is K's solve: refine with it directly, no CG.
  exact = c.dtype == np.float64 and not preconditioner_shift
  solver = "inplace" if c.dtype == np.float64 else "mixed"

  def precondition(r):
    return cholesky_solve_in_place(c, r, block_size=block_size).astype(np.float64)

  def matvec(v):
    t = time.time()
    out = symmetric_matvec64(kernel, x, v)
    if l2:
      out += l2 * v
    logging.info("float64 product with K in %.0f s", time.time() - t)
    return out

  with jax.enable_x64(True):
    alpha = np.zeros_like(y)
    residual_vec, iterations, cg_tol = y, 0, tol
    for attempt in range(max_restarts + 1):
      if exact:
        delta, its = precondition(residual_vec), 1
      else:
        if attempt:  # CG's tolerance is relative to its right-hand side, now the residual
          cg_tol = min(0.1, tol * float(np.linalg.norm(y) / np.linalg.norm(residual_vec)))
        delta, its = conjugate_gradient(
            lambda p: jnp.asarray(matvec(np.asarray(p))), jnp.asarray(residual_vec),
            precondition=lambda r: jnp.asarray(precondition(np.asarray(r))), tol=cg_tol,
            max_iters=max_iters, log_every=0.0)
      alpha = alpha + np.asarray(delta)
      iterations += its
      ka = symmetric_matvec64(kernel, x, alpha)
      residual_vec = y - ka - l2 * alpha
      residual = float(np.linalg.norm(residual_vec) / np.linalg.norm(y))
      logging.info("%s solve: %d iterations, true relative residual %.3g", solver, iterations,
                   residual)
      if residual <= MIXED_TARGET:
        break
    else:
      logging.warning("%s solve: relative residual %.3g after %d restarts is above %g",
                      solver, residual, max_restarts, MIXED_TARGET)
  del c
  norm = math.sqrt(max(float(np.sum(alpha * ka)), 0.0))
  return KernelSolution(alpha=alpha, train_predictions=ka, residual=residual, norm=norm,
                        solver=solver, dtype="float64", jitter=0.0, iterations=iterations,
                        preconditioner_shift=preconditioner_shift)


# The factor is computed from the lower triangle only: jnp.linalg.cholesky would first
# symmetrise its input, one more n x n buffer. K is consumed (donated); the peak is K
# and its factor.
_cholesky_consuming = jax.jit(functools.partial(lax.linalg.cholesky, symmetrize_input=False),
                              donate_argnums=0)


@jax.jit
def _cho_solve(chol: jax.Array, y: jax.Array) -> jax.Array:
  return jax.scipy.linalg.cho_solve((chol, True), y)


def cholesky_solve(make_matrix: Callable[[float], jax.Array], shift: float,
                   y: jax.Array) -> tuple[jax.Array, float]:
  """Solves (K + shift I) x = y by Cholesky; returns (x, jitter).

  `make_matrix(s)` builds K + s I; it is called again for each retry because the
  factorisation consumes it. The retries add jitter = mean(diag K) x 10^e for growing
  e (from 1e-12 in float64, 1e-7 in float32) until the factor is finite.

  Raises:
    np.linalg.LinAlgError: no jitter up to 1% of the mean diagonal worked.
  """
  mean_diag = None
  for e in [None] + list(range(-12 if y.dtype == jnp.float64 else -7, -1)):
    jitter = 0.0 if e is None else mean_diag * 10.0**e
    if jitter:
      logging.warning("Cholesky failed; retrying with jitter %.3g", jitter)
    a = make_matrix(shift + jitter)
    if mean_diag is None:
      mean_diag = float(jnp.mean(jnp.diagonal(a))) - shift
    chol = _cholesky_consuming(a)
    del a
    if bool(jnp.all(jnp.isfinite(jnp.diagonal(chol)))):
      return _cho_solve(chol, y), jitter
    del chol
  raise np.linalg.LinAlgError("Cholesky failed even with a jitter of 1% of the diagonal")


def conjugate_gradient(matvec: Callable[[jax.Array], jax.Array], y: jax.Array, *,
                       precondition: Callable[[jax.Array], jax.Array] | None = None,
                       tol: float = 1e-6, max_iters: int = 10_000,
                       log_every: float = 30.0) -> tuple[jax.Array, int]:
  """Solves A X = Y for symmetric positive definite A given only X -> A X.

  Each column of Y runs its own (preconditioned) CG, with its own step sizes, in
  lockstep, so one matvec serves all of them. Stops when every column's
  |A x - y| / |y| (by the recurrence) is below tol.

  Args:
    matvec: X -> A X.
    y: [n, k] right-hand sides.
    precondition: R -> P^{-1} R for a symmetric positive definite P ~ A; None for none.
    tol: relative residual to stop at.
    max_iters: iteration cap (a warning is logged when it is reached).
    log_every: seconds between progress lines.

  Returns:
    (X, iterations).
  """
  precondition = precondition or (lambda r: r)
  y_norm = jnp.linalg.norm(y, axis=0)
  y_norm = jnp.where(y_norm > 0, y_norm, 1)
  x, r = jnp.zeros_like(y), y
  z = precondition(r)
  p, rz = z, jnp.sum(r * z, axis=0)
  last_log = time.time()
  for it in range(1, max_iters + 1):
    x, r, rel = _cg_update(matvec(p), x, r, p, rz, y_norm)
    rel = float(rel)
    if rel < tol:
      return x, it
    p, rz = _cg_direction(r, precondition(r), p, rz)
    if time.time() - last_log > log_every:
      logging.info("CG iteration %d: max relative residual %.3g", it, rel)
      last_log = time.time()
  logging.warning("CG stopped after %d iterations at relative residual %.3g", max_iters, rel)
  return x, max_iters


@jax.jit
def _cg_update(ap, x, r, p, rz, y_norm):
  step = rz / jnp.maximum(jnp.sum(p * ap, axis=0), jnp.finfo(x.dtype).tiny)
  r = r - step * ap
  return x + step * p, r, jnp.max(jnp.linalg.norm(r, axis=0) / y_norm)


@jax.jit
def _cg_direction(r, z, p, rz):
  rz_new = jnp.sum(r * z, axis=0)
  return z + (rz_new / jnp.maximum(rz, jnp.finfo(r.dtype).tiny)) * p, rz_new


def nystrom_preconditioner(kernel: Kernel, x: jax.Array, rank: int, *, shift: float = 0.0,
                           seed: int = 0, block_size: int = 1024
                           ) -> Callable[[jax.Array], jax.Array]:
  """P^{-1} for randomized Nystrom preconditioned CG (Frangella, Tropp & Udell, 2023).

  K ~ U diag(lam) U^T from `rank` random landmark columns C = K[:, S]:
  C K[S, S]^{-1} C^T = B B^T with B = C L^{-T}, L L^T = K[S, S], and U, sqrt(lam) the
  SVD of B. Then P^{-1} = (lam_min + shift) U (diag(lam) + shift)^{-1} U^T + (I - U U^T)
  flattens the top of K's spectrum: CG's iterations go as the square root of
  lam_rank / lam_min(K + shift I) instead of lam_1 / lam_min. Holds C, B and U, each
  n x rank. On MNIST (n = 3,000, exact interpolation) rank 300 cuts the iterations
  from about 930 to 180.
  """
  n = x.shape[0]
  rank = min(rank, n)
  landmarks = jnp.asarray(np.sort(np.random.default_rng(seed).choice(n, rank, replace=False)))
  c = kernel_matrix(kernel, x, x[landmarks], block_size=block_size)
  u, lam = _nystrom_factors(c, landmarks)
  del c
  coef = (lam[-1] + shift) / (lam + shift)
  return lambda r: _apply_nystrom(u, coef, r)


@jax.jit
def _nystrom_factors(c, landmarks):
  w = c[landmarks]
  eps = jnp.finfo(c.dtype).eps * jnp.trace(w)  # landmarks that nearly coincide
  chol = jnp.linalg.cholesky(w + eps * jnp.eye(w.shape[0], dtype=w.dtype))
  b = jax.scipy.linalg.solve_triangular(chol, c.T, lower=True).T
  u, sv, _ = jnp.linalg.svd(b, full_matrices=False)
  lam = sv**2
  # Directions Nystrom cannot resolve get coefficient 1 (left alone), not a huge one.
  keep = lam > lam[0] * jnp.sqrt(jnp.finfo(c.dtype).eps)
  return jnp.where(keep, u, 0), jnp.where(keep, lam, jnp.min(jnp.where(keep, lam, jnp.inf)))


@jax.jit
def _apply_nystrom(u, coef, r):
  ur = jnp.dot(u.T, r, precision=HIGHEST)
  return r + jnp.dot(u, (coef[:, None] - 1) * ur, precision=HIGHEST)


def predict(kernel: Kernel, x_train: np.ndarray, alpha: np.ndarray, x: np.ndarray, *,
            block_size: int = 1024) -> np.ndarray:
  """f(x) = K(x, x_train) alpha [N, k], blocked, in alpha's dtype.

  float64 (CPU) goes through numpy/BLAS a tile at a time (`rect_matvec64`), as the mixed
  solver's products do; float32 through JAX.
  """
  if np.dtype(alpha.dtype) == np.float64:
    return rect_matvec64(kernel, np.asarray(x), np.asarray(x_train), alpha)
  with precision_scope(alpha.dtype):
    return np.asarray(kernel_matvec(kernel, jnp.asarray(x, alpha.dtype),
                                    jnp.asarray(x_train, alpha.dtype), jnp.asarray(alpha),
                                    block_size=block_size))


def classification_error(scores: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of rows whose argmax is not the label."""
  return float(np.mean(np.argmax(scores, axis=1) != np.asarray(labels)))
