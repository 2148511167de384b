r"""Section 5 / Table 3: fit image labels exactly with a kernel machine; report test error, norm.

Solves K alpha = Y (one-hot Y, no regularization unless --l2) on a class-balanced
subset of the training set and predicts the test set. Before the solve it prints the
memory plan and picks the solver: the direct Cholesky when K and its factor fit the
budget; else (CPU, float64) the in-place solver, K's lower triangle alone in float64,
Cholesky-factored in place and checked by a fresh float64 product (60k MNIST: 14.4 GB, no
jitter); else the mixed solver (that triangle in float32, refined to float64 accuracy by
preconditioned conjugate gradient: 7.2 GB at 60k); else blocked conjugate gradient. Prints
the result as JSON (with the process's measured peak memory) and writes it to --out.

  python -m rethinking.kernels --dataset=../shared/data/mnist.npz --num_train=0   # all 60k
  python -m rethinking.kernels --dataset=../shared/data/mnist.npz --num_train=0 --features=gabor
  python -m rethinking.kernels --dataset=../shared/data/cifar10_10k.npz --num_train=0
  python -m rethinking.kernels --dataset=../shared/data/mnist.npz --num_train=5000 \
      --kernel=gaussian --features=raw --out=/tmp/mnist_raw_5k.json
  python -m rethinking.kernels --dataset=../shared/data/cifar10_10k.npz --num_train=5000 \
      --features=random_conv --num_filters=1024 --l2=0.1
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from rethinking.theory import features as features_lib
from rethinking.theory import kernels

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Registers the flags; not at import, so this module and rethinking.expressivity can
  both be imported by one process (they share flag names)."""
  flags.DEFINE_string("dataset", None, "TFDS name (mnist, cifar10) or path of an .npz.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
  flags.DEFINE_integer("num_train", 2000, "Class-balanced training subset; 0 for all.")
  flags.DEFINE_integer("num_test", 0, "Class-balanced test subset; 0 for all.")
  flags.DEFINE_enum("kernel", "gaussian", sorted(kernels.KERNELS), "Kernel.")
  flags.DEFINE_float("bandwidth", 0.0, "Gaussian kernel width sigma in "
                     "exp(-|x-y|^2 / (2 sigma^2)); 0 for the median heuristic "
                     "(sigma = half the median distance between training features).")
  flags.DEFINE_float("gamma", 0.0, "Gaussian kernel exp(-gamma |x-y|^2): sets "
                     "sigma = sqrt(1 / (2 gamma)); overrides --bandwidth.")
  flags.DEFINE_enum("features", "raw", sorted(features_lib.FEATURES), "Image features.")
  flags.DEFINE_integer("num_filters", 1024, "Filters for --features=random_conv.")
  flags.DEFINE_float("l2", 0.0, "Ridge penalty: solves (K + l2 I) alpha = Y.")
  flags.DEFINE_enum("solver", "auto", list(kernels.SOLVERS),
                    "auto: Cholesky if K and its factor fit the memory budget, else the "
                    "in-place float64 Cholesky of K's lower triangle, else the mixed solver "
                    "(that triangle in float32 + float64 CG), else CG; the first that fits.")
  flags.DEFINE_float("memory_budget_gb", 0.0, "Memory budget for the solve, GB; 0 for 90% "
                     "of the host's available memory on CPU, 80% of free accelerator memory.")
  flags.DEFINE_integer("block_size", 1024, "Rows of K computed at a time.")
  flags.DEFINE_float("cg_tol", 1e-6, "CG stops at this relative residual (the mixed "
                     "solver at min(this, 3e-9)).")
  flags.DEFINE_integer("cg_max_iters", 10_000, "CG iteration cap.")
  flags.DEFINE_integer("cg_rank", 1000, "Rank of CG's Nystrom preconditioner; 0 for none.")
  flags.DEFINE_integer("seed", 0, "Seed for the subsets and the random filters.")
  flags.DEFINE_string("out", None, "Where to write the JSON result.")
  flags.mark_flag_as_required("dataset")


def run(*, dataset: str, num_train: int, num_test: int = 0, kernel: str = "gaussian",
        bandwidth: float = 0.0, gamma: float = 0.0, features: str = "raw",
        num_filters: int = 1024, l2: float = 0.0, solver: str = "auto",
        memory_budget_gb: float = 0.0, block_size: int = 1024, cg_tol: float = 1e-6,
        cg_max_iters: int = 10_000, cg_rank: int = 1000, seed: int = 0,
        data_dir: str | None = None) -> dict:
  """Runs one Table 3 experiment; the arguments mirror the flags. Returns the result."""
  start = time.time()
  budget = int(memory_budget_gb * 1e9) or kernels.default_memory_budget()
  ds = features_lib.load_subsets(dataset, num_train, num_test, seed=seed, data_dir=data_dir)
  n = ds.x_train.shape[0]
  dtype = kernels.solve_dtype()

  t = time.time()
  featurize = features_lib.make_features(features, ds.x_train, num_filters=num_filters,
                                         seed=seed)
  f_train, f_test = featurize(ds.x_train), featurize(ds.x_test)
  time_features = time.time() - t
  plan = kernels.plan_memory(n, dtype, feature_dim=f_train.shape[1],
                             num_test=f_test.shape[0], num_outputs=ds.num_classes,
                             budget_bytes=budget, solver=solver, block_size=block_size,
                             cg_rank=cg_rank)
  print(f"memory plan: {plan.describe()}", flush=True)

  if kernel == "gaussian" and gamma > 0:
    bandwidth = (2 * gamma)**-0.5
  elif kernel == "gaussian" and bandwidth <= 0:
    bandwidth = kernels.median_bandwidth(f_train, seed=seed)
  k = kernels.Kernel(kernel, bandwidth if kernel == "gaussian" else 1.0)
  y = np.eye(ds.num_classes)[ds.y_train]
  t = time.time()
  sol = kernels.solve(k, f_train, y, l2=l2, solver=plan.solver, dtype=dtype,
                      block_size=block_size, cg_tol=cg_tol, cg_max_iters=cg_max_iters,
                      cg_rank=cg_rank, seed=seed)
  time_solve = time.time() - t
  t = time.time()
  scores = kernels.predict(k, f_train, sol.alpha, f_test, block_size=block_size)
  time_predict = time.time() - t

  return {
      "dataset": dataset,
      "num_train": n,
      "num_test": int(ds.x_test.shape[0]),
      "kernel": kernel,
      "bandwidth": bandwidth if kernel == "gaussian" else None,
      "gamma": 1 / (2 * bandwidth**2) if kernel == "gaussian" else None,
      "features": features,
      "feature_dim": int(f_train.shape[1]),
      "num_filters": num_filters if features == "random_conv" else None,
      "l2": l2,
      "seed": seed,
      "platform": jax.default_backend(),
      "solver": sol.solver,
      "dtype": sol.dtype,
      "jitter": sol.jitter,
      "preconditioner_shift": sol.preconditioner_shift,
      "cg_iterations": sol.iterations,
      "train_error": kernels.classification_error(sol.train_predictions, ds.y_train),
      "test_error": kernels.classification_error(scores, ds.y_test),
      "norm": sol.norm,
      "residual": sol.residual,
      "time_s": {"features": time_features, "solve": time_solve, "predict": time_predict,
                 "total": time.time() - start},
      "memory": {**dataclasses.asdict(plan), "peak_rss_bytes": kernels.peak_rss_bytes()},
  }


def write_result(result: dict, out: str | None) -> None:
  """Prints the result as JSON and writes it to `out` when given."""
  text = json.dumps(result, indent=2)
  print(text)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      f.write(text + "\n")


def main(argv):
  del argv
  write_result(run(dataset=FLAGS.dataset, num_train=FLAGS.num_train, num_test=FLAGS.num_test,
                   kernel=FLAGS.kernel, bandwidth=FLAGS.bandwidth, gamma=FLAGS.gamma,
                   features=FLAGS.features,
                   num_filters=FLAGS.num_filters, l2=FLAGS.l2, solver=FLAGS.solver,
                   memory_budget_gb=FLAGS.memory_budget_gb, block_size=FLAGS.block_size,
                   cg_tol=FLAGS.cg_tol, cg_max_iters=FLAGS.cg_max_iters, cg_rank=FLAGS.cg_rank,
                   seed=FLAGS.seed,
                   data_dir=FLAGS.data_dir), FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
