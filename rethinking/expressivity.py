r"""Section 4 / Theorem 1: a depth-2 ReLU net with 2n + d weights fits n images exactly.

Builds the Theorem 1 network on a class-balanced subset of the training images (pixels
/ 255; one-hot targets, or uniformly random labels with --random_labels), evaluates it
on the training points and the test set, and prints (and writes to --out) a JSON
result: the largest residual relative to the targets, the smallest gap between
projections, the weight norm, errors, time and memory.

  python -m rethinking.expressivity --dataset=../shared/data/cifar10_10k.npz \
      --num_points=1000 --random_labels --out=/tmp/expressivity.json
  python -m rethinking.expressivity --dataset=../shared/data/mnist.npz --num_points=10000
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from rethinking.kernels import write_result
from rethinking.theory import expressivity
from rethinking.theory import features as features_lib
from rethinking.theory.kernels import classification_error

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Registers the flags; not at import (rethinking.kernels shares their names)."""
  flags.DEFINE_string("dataset", None, "TFDS name (mnist, cifar10) or path of an .npz.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
  flags.DEFINE_integer("num_points", 1000, "Class-balanced training points to fit; 0 for all.")
  flags.DEFINE_integer("num_test", 0, "Class-balanced test subset; 0 for all.")
  flags.DEFINE_bool("random_labels", False, "Replace the labels by uniform random classes.")
  flags.DEFINE_integer("num_candidates", 32, "Random directions tried for a.")
  flags.DEFINE_integer("seed", 0, "Seed for the subsets, the labels and the directions.")
  flags.DEFINE_string("out", None, "Where to write the JSON result.")
  flags.mark_flag_as_required("dataset")


def run(*, dataset: str, num_points: int, num_test: int = 0, random_labels: bool = False,
        num_candidates: int = 32, seed: int = 0, data_dir: str | None = None) -> dict:
  """Fits and evaluates the Theorem 1 network; the arguments mirror the flags."""
  start = time.time()
  ds = features_lib.load_subsets(dataset, num_points, num_test, seed=seed, data_dir=data_dir)
  raw = features_lib.make_features("raw", ds.x_train)
  z, z_test = raw(ds.x_train), raw(ds.x_test)
  labels = ds.y_train
  if random_labels:
    labels = np.random.default_rng(seed).integers(0, ds.num_classes, labels.shape[0])
  y = np.eye(ds.num_classes)[labels]
  n, d = z.shape

  t = time.time()
  net = expressivity.fit(z, y, num_candidates=num_candidates, seed=seed)
  time_fit = time.time() - t
  t = time.time()
  residual = expressivity.max_relative_residual(net, z, y)
  train_error = classification_error(net(z), labels)
  test_error = classification_error(net(z_test), ds.y_test)
  time_eval = time.time() - t
  return {
      "dataset": dataset,
      "num_points": n,
      "num_distinct": int(net.b.shape[0]),
      "dim": d,
      "num_params": net.num_params,
      "random_labels": random_labels,
      "seed": seed,
      "residual": residual,
      "min_gap": net.min_gap,
      "relative_gap": net.relative_gap,
      "weight_norm": net.weight_norm,
      "train_error": train_error,
      "test_error": test_error,
      "num_test": int(z_test.shape[0]),
      "time_s": {"fit": time_fit, "evaluate": time_eval, "total": time.time() - start},
      "memory": {"points_bytes": z.size * 8,
                 "eval_block_bytes": min(expressivity.EVAL_BLOCK, n) * n * 8},
  }


def main(argv):
  del argv
  write_result(run(dataset=FLAGS.dataset, num_points=FLAGS.num_points, num_test=FLAGS.num_test,
                   random_labels=FLAGS.random_labels, num_candidates=FLAGS.num_candidates,
                   seed=FLAGS.seed, data_dir=FLAGS.data_dir), FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
