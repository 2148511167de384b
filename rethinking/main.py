r"""Command line: trains one run from a config file.

  python -m rethinking.main --config=configs/cifar10.py:model=mlp_1x512,corruption=random_labels \
      --workdir=/tmp/run [--config.num_epochs=50 ...]

Running the same command on the same workdir resumes the run. Exit codes: 0 done;
75 stopped by SIGTERM/SIGINT after saving (rerun to continue); 1 a failed run
(non-finite loss, workdir in use); 2 bad input (config or data). Kept short on
purpose: everything else is importable from `rethinking.train`.
"""

import logging as logging_lib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.mark_flags_as_required(["workdir"])
config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for a multi-process run (SLURM and Cloud TPU "
                    "pods are detected without it).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO chatter from orbax (a few dozen lines per checkpoint); keeps its warnings."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # TensorFlow (TFDS input pipelines only) must never take the accelerators from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _enable_compilation_cache()
  from rethinking import distributed  # pylint: disable=g-import-not-at-top
  from rethinking import preemption  # pylint: disable=g-import-not-at-top
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from rethinking import train  # pylint: disable=g-import-not-at-top
  logging.info("Config:\n%s", FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except preemption.Preempted as e:
    logging.warning("Preempted (%s): checkpoint saved, metrics flushed. Run the same command "
                    "to continue.", e)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  except ValueError as e:
    sys.exit(_error(e, 2))
  except (RuntimeError, FloatingPointError) as e:
    sys.exit(_error(e, 1))


def _enable_compilation_cache() -> None:
  """Reuses compiled XLA programs across runs (resumes, sweeps, tests).

  On CPU, compiling a conv net's initializers and train step takes tens of
  seconds; the persistent cache brings a repeated run's compile to seconds.
  JAX_COMPILATION_CACHE_DIR chooses the folder (default ~/.cache/rethinking/jax).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "rethinking", "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _error(e: Exception, code: int) -> int:
  print(f"error: {e}", file=sys.stderr, flush=True)
  return code


if __name__ == "__main__":
  app.run(main)
