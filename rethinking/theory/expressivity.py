"""Theorem 1 (Appendix C): a depth-2 ReLU net with 2n + d weights fits any n points.

    c(x) = sum_j w_j relu(<a, x> - b_j),   a in R^d,  b in R^n,  w in R^{n x k}.

Project the points onto a direction a, sort the projections x_1 < ... < x_n and put
one knot b_i in each gap, b_1 < x_1 < b_2 < x_2 < ... < b_n < x_n. The matrix
A_ij = relu(x_i - b_j) is then lower triangular with a positive diagonal, and A w = y
is solved by forward substitution.

Conditioning is the whole game in floating point: the weights scale like
1 / (smallest gap between projections), so `a` is chosen to make the projections well
separated, not merely distinct (see `choose_direction`). Everything runs in numpy
float64 on the host; n is at most tens of thousands, and the solve is O(n k).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Where the knot b_i sits in the gap (x_{i-1}, x_i), as a fraction of the gap. Forward
# substitution carries the slope of c across each gap; with the knot at fraction t an
# error in the incoming slope is multiplied by t / (1 - t). Midpoint knots (t = 1/2)
# pass slope errors on undamped, alternating in sign, so they pile up along the line;
# t = 0.1 damps them ninefold per point.
KNOT_FRACTION = 0.1

EVAL_BLOCK = 2048  # rows of relu(x a - b) [EVAL_BLOCK, m] evaluated at a time


@dataclasses.dataclass(frozen=True)
class ReluInterpolant:
  """c(x) = relu(x @ a - b) @ w, the depth-2 network of Theorem 1.

  Attributes:
    a: [d] projection direction (unit norm).
    b: [m] knots, increasing.
    w: [m] or [m, k] output weights (one column per target column).
    min_gap: smallest gap between the sorted training projections (|a| = 1).
    relative_gap: min_gap / (max projection - min projection); scale free, and
      at most 1 / (m - 1), reached by evenly spaced projections.
  """

  a: np.ndarray
  b: np.ndarray
  w: np.ndarray
  min_gap: float
  relative_gap: float

  @property
  def num_params(self) -> int:
    return self.a.size + self.b.size + self.w.size

  @property
  def weight_norm(self) -> float:
    """Frobenius norm of the output weights w."""
    return float(np.linalg.norm(self.w))

  def __call__(self, x: np.ndarray, block_size: int = EVAL_BLOCK) -> np.ndarray:
    """Evaluates c on the rows of x [N, d], a block of rows at a time (memory N_blk x m)."""
    proj = np.asarray(x, np.float64).reshape(len(x), -1) @ self.a
    w = self.w.reshape(self.w.shape[0], -1)
    out = np.empty((proj.shape[0], w.shape[1]))
    for i in range(0, proj.shape[0], block_size):
      out[i:i + block_size] = np.maximum(proj[i:i + block_size, None] - self.b, 0.0) @ w
    return out.reshape((proj.shape[0],) + self.w.shape[1:])


def fit(z: np.ndarray, y: np.ndarray, *, num_candidates: int = 32,
        seed: int = 0) -> ReluInterpolant:
  """Builds the Theorem 1 network with c(z_i) = y_i for every row.

  Args:
    z: [n, ...] points (flattened to [n, d]).
    y: [n] or [n, k] real targets, e.g. one-hot labels with one column per class.
    num_candidates: random directions tried by `choose_direction`.
    seed: seed for the directions.

  Returns:
    The network. Repeated points with equal targets share one knot, so b and w may
    have fewer than n rows.

  Raises:
    ValueError: identical points with different targets (names their indices).
  """
  z = np.asarray(z, np.float64).reshape(len(z), -1)
  y = np.asarray(y, np.float64)
  if y.shape[0] != z.shape[0]:
    raise ValueError(f"{z.shape[0]} points but {y.shape[0]} targets")
  keep = unique_points(z, y)
  z, y = z[keep], y[keep]
  a = choose_direction(z, num_candidates=num_candidates, seed=seed)
  proj = z @ a
  order = np.argsort(proj, kind="stable")
  x = proj[order]
  gaps = np.diff(x)
  if gaps.size and gaps.min() <= 0:
    # Distinct points always have a direction with distinct projections; this only
    # happens when every candidate hit a coincidence.
    raise RuntimeError("two distinct points project to the same value; "
                       "try another seed or more candidates")
  spread = x[-1] - x[0] if x.size > 1 else 1.0
  first_gap = spread / max(x.size - 1, 1)  # b_1 sits one mean gap below x_1.
  b = np.concatenate([[x[0] - first_gap], x[:-1] + KNOT_FRACTION * gaps])
  w = forward_substitution(x, b, y[order])
  min_gap = float(gaps.min()) if gaps.size else float("inf")
  return ReluInterpolant(a=a, b=b, w=w, min_gap=min_gap,
                         relative_gap=min_gap / spread if gaps.size else 1.0)


def forward_substitution(x: np.ndarray, b: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Solves A w = y for A_ij = relu(x_i - b_j), b_1 < x_1 < b_2 < ... < b_n < x_n.

  Row i of A w = y reads c(x_i) = y_i, with c piecewise linear and a kink w_j at b_j.
  Substituting row by row in the local form "value at the knot plus slope times
  distance" keeps every quantity of the size of one gap, whereas the textbook
  recurrence y_i - sum_{j<i} A_ij w_j subtracts O(1 / gap) terms from each other.
  O(n k) time, float64.

  Args:
    x: [n] sorted projections.
    b: [n] interleaved knots.
    y: [n] or [n, k] targets in the order of x.

  Returns:
    w, the shape of y.
  """
  y2 = y.reshape(y.shape[0], -1)
  w = np.empty_like(y2)
  slope = np.zeros(y2.shape[1])
  value_at_knot = np.zeros(y2.shape[1])  # c(b_1) = 0: no unit is active left of b_1.
  for i in range(x.shape[0]):
    if i:
      value_at_knot = y2[i - 1] + slope * (b[i] - x[i - 1])
    new_slope = (y2[i] - value_at_knot) / (x[i] - b[i])
    w[i] = new_slope - slope
    slope = new_slope
  return w.reshape(y.shape)


def choose_direction(z: np.ndarray, *, num_candidates: int = 32, seed: int = 0) -> np.ndarray:
  """A unit direction whose projections of the rows of z are well separated.

  Scores a direction by its relative gap, min gap / spread of the projections. Tries
  `num_candidates` Gaussian directions, then refits the best one by least squares to
  evenly spaced targets in the same order. When d >= n (and the centred points have
  rank n - 1) the refit is exact, giving the best possible relative gap 1 / (n - 1);
  for d < n it evens out the dense middle of the projections. The better of the two
  is returned.
  """
  n, d = z.shape
  rng = np.random.default_rng(seed)
  candidates = rng.standard_normal((d, num_candidates))
  best = candidates[:, np.argmax(relative_gaps(z @ candidates))]
  if n > 2:
    ranks = np.empty(n)
    ranks[np.argsort(z @ best, kind="stable")] = np.arange(n)
    zc, tc = z - z.mean(axis=0), ranks - ranks.mean()
    # Least squares through the smaller Gram matrix: min(n, d)^2 instead of n x d.
    if d >= n:
      refit = zc.T @ np.linalg.lstsq(zc @ zc.T, tc, rcond=None)[0]
    else:
      refit = np.linalg.lstsq(zc.T @ zc, zc.T @ tc, rcond=None)[0]
    if np.any(refit) and relative_gaps((z @ refit)[:, None])[0] > relative_gaps(
        (z @ best)[:, None])[0]:
      best = refit
  return best / np.linalg.norm(best)


def relative_gaps(proj: np.ndarray) -> np.ndarray:
  """min gap / spread of each column of proj [n, m]; 0 where two projections tie."""
  s = np.sort(proj, axis=0)
  if s.shape[0] < 2:
    return np.ones(s.shape[1])
  spread = s[-1] - s[0]
  return np.where(spread > 0, np.diff(s, axis=0).min(axis=0) / np.where(spread > 0, spread, 1),
                  0.0)


def unique_points(z: np.ndarray, y: np.ndarray, max_reported: int = 5) -> np.ndarray:
  """Indices of the first occurrence of each distinct row of z.

  Raises:
    ValueError: some identical rows have different targets; the message names up to
      `max_reported` such groups by their indices.
  """
  # One opaque byte string per row: far faster than np.unique(axis=0). Adding 0.0
  # turns -0.0 into 0.0 so that equal rows have equal bytes.
  rows = np.ascontiguousarray(z + 0.0).view(np.dtype((np.void, z.shape[1] * z.itemsize)))
  _, first, inverse, counts = np.unique(rows.ravel(), return_index=True, return_inverse=True,
                                        return_counts=True)
  inverse = inverse.reshape(-1)
  conflicts = []
  for group in np.flatnonzero(counts > 1):
    members = np.flatnonzero(inverse == group)
    targets = y[members].reshape(len(members), -1)
    if np.any(targets != targets[0]):
      conflicts.append(members.tolist())
  if conflicts:
    shown = "; ".join(f"points {m} are identical" for m in conflicts[:max_reported])
    more = f" (and {len(conflicts) - max_reported} more groups)" if len(
        conflicts) > max_reported else ""
    raise ValueError(f"{shown}{more} but have different targets: no function, and so "
                     "no network, can fit them; Theorem 1 needs distinct points")
  return np.sort(first)


def max_relative_residual(net: ReluInterpolant, z: np.ndarray, y: np.ndarray) -> float:
  """max_i |c(z_i) - y_i| / max |y|: how far the evaluated network is from interpolating.

  Evaluates the network formula itself (not the recurrence that built w), so rounding
  in relu(x a - b) @ w is included. Relative to the largest target, since one-hot
  targets are mostly zero.
  """
  y = np.asarray(y, np.float64)
  scale = np.abs(y).max() if y.size and np.abs(y).max() > 0 else 1.0
  pred = net(z)
  return float(np.abs(pred - y.reshape(pred.shape)).max() / scale)
