r"""Command line: trains one run from a config file.

  python -m rethinking.main --config=configs/cifar10.py:quickstart --workdir=/tmp/run
  python -m rethinking.main --config=configs/cifar10.py:model=mlp_1x512,corruption=random_labels \
      --workdir=/tmp/run [--config.num_epochs=50 ...]

Running the same command on the same workdir resumes the run. Exit codes: 0 done;
75 stopped by SIGTERM/SIGINT after saving (rerun to continue); 1 a failed run
(non-finite loss, workdir in use, a failed write); 2 bad input (a flag, a config
field, the data or the workdir path): one `error:` line, before any compute.
Library INFO logs (JAX backends, TensorFlow, orbax) are hidden unless
`--verbosity=1`. Kept short on purpose: everything else is importable from
`rethinking.train`.
"""

if __name__ == "__main__":  # First of all: a signal during start-up is a clean exit 75.
  from rethinking import preemption as _preemption  # Imports nothing heavy.
  _preemption.install()

import logging as logging_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from rethinking import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for a multi-process run (SLURM and Cloud TPU "
                    "pods are detected without it).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_bool("dry_run", False, "Print this process's plan (jax.distributed, its devices, "
                  "the batch split, the scaled learning rate) and exit; nothing is trained.")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO records that do not come from this package (JAX's backend probing,
  orbax's few dozen lines per checkpoint); keeps every warning and error."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake one `error:` line and exit 2.

  absl and ml_collections raise a different exception per mistake (an unknown
  field is an AttributeError, a preset the config file rejects a ValueError
  wrapping its traceback, a missing file an OSError); each becomes its last,
  most specific line, prefixed with the flag it came from.
  """
  try:
    rest = FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(_usage_error(_flag_error(e, argv)))
  if len(rest) > 1:
    sys.exit(_usage_error(f"unexpected arguments {rest[1:]} (flags are --name=value)"))
  if FLAGS.config is None:
    sys.exit(_usage_error("--config is required (e.g. --config=configs/cifar10.py:quickstart)"))
  try:  # A config file that failed to load is reported only when first read.
    FLAGS.config.to_dict()
  except OSError as e:
    sys.exit(_usage_error(_flag_error(e, argv)))
  try:
    workdir_lib.check_path(FLAGS.workdir)
  except ValueError as e:
    sys.exit(_usage_error(str(e)))
  return rest


def _flag_error(e: Exception, argv: list[str]) -> str:
  text = str(e).replace("\\n", "\n")  # A KeyError's message comes quoted, newlines escaped.
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  if isinstance(e, (AttributeError, KeyError)):  # A misspelt --config.<field>.
    field = (re.findall(r"\w+", lines[0]) or ["?"])[0] if lines else "?"
    given = next((a for a in argv if a.startswith(f"--config.{field}")), f"--config.{field}")
    hint = re.search(r'Did you mean "(\w+)"', text)
    hint = f" Did you mean --config.{hint.group(1)}?" if hint else ""
    return f"{given}: the config has no field {field!r}.{hint} (fields: docs/cifar.md)"
  config_arg = next((a for a in argv if a.startswith("--config=")), "--config")
  if isinstance(e, OSError):  # The config file itself: the OS's reason is the last line.
    return f"{config_arg}: cannot load the config file ({lines[-1] if lines else e})"
  if "Error whilst parsing config file" in text:
    # The config file's own error, without its traceback.
    return f"{config_arg}: {re.sub(r'^[A-Za-z]*Error: ', '', lines[-1])}"
  return "; ".join(lines) or type(e).__name__


def _usage_error(message: str) -> int:
  print(f"error: {message}", file=sys.stderr, flush=True)
  return 2


def main(argv):
  del argv  # Checked by parse_flags.
  # TensorFlow only feeds data (decode, crop, resize), where oneDNN's custom ops do not
  # apply; off, TF also skips its notice about them.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  if FLAGS.verbosity < 1:
    logging.get_absl_handler().addFilter(_QuietLibraries())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO lines.
  apply_memory_fraction(FLAGS.config, os.environ)  # Before JAX is imported.
  _enable_compilation_cache()
  from rethinking import distributed  # pylint: disable=g-import-not-at-top
  from rethinking import preemption  # pylint: disable=g-import-not-at-top
  if FLAGS.dry_run:
    sys.exit(distributed.dry_run(FLAGS.config, FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id))
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from rethinking import train  # pylint: disable=g-import-not-at-top
  try:
    row = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except preemption.Preempted as e:
    logging.warning("Preempted (%s). Run the same command to continue.", e)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  except ValueError as e:
    sys.exit(_error(e, 2))
  except (RuntimeError, FloatingPointError) as e:
    sys.exit(_error(e, 1))
  if row:
    print(_final_line(row, FLAGS.workdir), flush=True)


def _final_line(row: dict, workdir: str) -> str:
  train_acc = row.get("train_eval_accuracy", row.get("train_accuracy"))
  return (f"done: epoch {row['epoch']} (step {row['step']}), train accuracy {train_acc:.4f}, "
          f"test accuracy {row['test_accuracy']:.4f} (best {row['best_test_accuracy']:.4f} at "
          f"epoch {row['best_epoch']}); metrics in {os.path.join(workdir, 'metrics.jsonl')}")


def apply_memory_fraction(config, environ) -> None:
  """Sets XLA_CLIENT_MEM_FRACTION in `environ` from config.memory_fraction.

  JAX preallocates that share of each GPU's memory (0.75 by default) when it creates
  its GPU client, so several small runs sharing a GPU each need a smaller one, set
  before JAX is imported. (jaxlib 0.10 reads XLA_CLIENT_MEM_FRACTION, or the
  deprecated XLA_PYTHON_CLIENT_MEM_FRACTION, and refuses both at once: the config
  replaces the old one.) 0 leaves the environment as it is: JAX's default, or the
  caller's own setting. A value outside (0, 1] is left alone here:
  validation.check_config refuses it with one `error:` line before anything runs.
  """
  fraction = config.get("memory_fraction", 0)
  if isinstance(fraction, float) and 0 < fraction <= 1:
    environ.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
    environ["XLA_CLIENT_MEM_FRACTION"] = f"{fraction:g}"


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


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
