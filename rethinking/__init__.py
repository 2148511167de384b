"""rethinking: Zhang et al. (ICLR 2017) randomization tests in JAX/Flax."""

import importlib.metadata
import importlib.util
import os

# XLA's CPU backend in jaxlib 0.10-0.12 can hand work to YNNPACK; restricting that to
# individual matmuls keeps convolutions and their gradients on XLA's own (Eigen)
# kernels, measured 2.5x faster on a 2-core CPU (small AlexNet, batch 128: 186 -> 463
# and 203 -> 519 images/s in two runs; see README, Performance). Only the CPU backend
# reads it. Set before jax starts a backend (XLA reads XLA_FLAGS once); skipped where
# the user sets the option, with RETHINKING_XLA_DEFAULTS=0, for a jaxlib not checked
# to know it (XLA aborts on an unknown flag), and where libtpu is installed (its
# runtime was not checked).
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
_KNOWN_JAXLIB = ((0, 10), (0, 11), (0, 12))


def _jaxlib_minor() -> tuple[int, ...]:
  try:
    return tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return ()


def _set_cpu_xla_defaults() -> None:
  if os.environ.get("RETHINKING_XLA_DEFAULTS", "1") == "0":
    return
  if _jaxlib_minor() not in _KNOWN_JAXLIB:
    return
  if importlib.util.find_spec("libtpu") is not None:  # A TPU host: leave its XLA_FLAGS alone.
    return
  flags = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
  if missing:
    os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()


_set_cpu_xla_defaults()
