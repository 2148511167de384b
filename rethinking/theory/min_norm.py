"""Section 5's derivation as an experiment: SGD from zero finds the minimum-norm interpolant.

For underdetermined least squares (n equations, d > n unknowns) every SGD update is a
multiple of some row x_i, so an SGD path started at w0 = 0 never leaves the row space
of X: w = X^T a. If it interpolates, X X^T a = y, so w = X^T (X X^T)^{-1} y, the unique
minimum-l2-norm solution. Ridge regression, w = X^T (X X^T + l2 I)^{-1} y, tends to the
same point as l2 -> 0. `rethinking.theory.kernels` with the linear kernel solves the
same system by the kernel trick.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def min_norm_solution(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """X^T (X X^T)^{-1} y in float64; x [n, d] with full row rank n <= d."""
  return ridge_solution(x, y, 0.0)


def ridge_solution(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
  """argmin_w |X w - y|^2 + l2 |w|^2 = X^T (X X^T + l2 I)^{-1} y (the dual form), float64."""
  x = np.asarray(x, np.float64)
  gram = x @ x.T + l2 * np.eye(x.shape[0])
  return x.T @ np.linalg.solve(gram, np.asarray(y, np.float64))


def sgd_least_squares(x: np.ndarray, y: np.ndarray, *, num_epochs: int, batch_size: int = 1,
                      learning_rate: float | None = None, seed: int = 0,
                      w0: np.ndarray | None = None) -> np.ndarray:
  """Minibatch SGD on (1/2) mean_i (<x_i, w> - y_i)^2 from w0 (zero); returns the final w.

  From any w0 the iterates move only within the row space of X, so SGD converges to
  the min-norm solution plus w0's component orthogonal to the rows; from zero, to the
  min-norm solution itself.

  Args:
    x: [n, d] inputs.
    y: [n] or [n, k] targets.
    num_epochs: passes over the data, each in a fresh seeded order.
    batch_size: examples per step.
    learning_rate: None for 1 / max_i |x_i|^2, at which a single-example step solves
      that example's equation exactly (the Kaczmarz step) and no step can overshoot.
    seed: seed of the example order.
    w0: the starting point, [d] or [d, k]; None for zero.

  Returns:
    w [d] or [d, k], float32 (jax's default; the experiment needs no more).
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if learning_rate is None:
    learning_rate = 1.0 / float(jnp.max(jnp.sum(x * x, axis=1)))
  if w0 is None:
    w0 = jnp.zeros((x.shape[1],) + y.shape[1:], jnp.float32)
  keys = jax.random.split(jax.random.key(seed), num_epochs)
  return np.asarray(_sgd(x, y, jnp.asarray(w0, jnp.float32), keys, learning_rate, batch_size))


@functools.partial(jax.jit, static_argnames="batch_size")
def _sgd(x, y, w0, keys, learning_rate, batch_size):
  n = x.shape[0]
  steps = n // batch_size

  def epoch(w, key):
    order = jax.random.permutation(key, n)[:steps * batch_size].reshape(steps, batch_size)

    def step(w, idx):
      xb, yb = x[idx], y[idx]
      grad = xb.T @ (xb @ w - yb) / batch_size
      return w - learning_rate * grad, None

    return jax.lax.scan(step, w, order)[0], None

  return jax.lax.scan(epoch, w0, keys)[0]


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
  """|a - b| / |b| (Frobenius)."""
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))
