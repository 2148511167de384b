"""rethinking: Zhang et al. (ICLR 2017) randomization tests in JAX/Flax."""

import importlib.metadata
import importlib.util
import os

# XLA's CPU backend in jaxlib 0.10-0.12 can hand work to YNNPACK; restricting that to
# individual matmuls keeps convolutions and their gradients on XLA's own (Eigen)
# kernels. Chosen per CPU vendor by measurement (train images/s, batch 128, 2 cores):
# on AMD EPYC it made alexnet_small 2.5x faster (186 -> 463 and 203 -> 519 in two runs;
# docs/performance.md); on Intel Xeon Sapphire Rapids (AVX-512, AMX) it made it slower
# (421 -> 376; inception_small 52 -> 45; issue 16), so Intel runs XLA's own choice, as
# does any CPU not measured. Only the CPU backend reads it. Set before jax starts a
# backend (XLA reads XLA_FLAGS once); skipped where the user sets the option, with
# RETHINKING_XLA_DEFAULTS=0, for a jaxlib not checked to know it (XLA aborts on an
# unknown flag), and where libtpu is installed (its runtime was not checked).
CPU_XLA_FLAGS_BY_VENDOR = {
    "AuthenticAMD": ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",),
    "GenuineIntel": (),
}


def cpu_vendor() -> str:
  """/proc/cpuinfo's vendor_id ('AuthenticAMD', 'GenuineIntel'); '' where there is none."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("vendor_id"):
          return line.partition(":")[2].strip()
  except OSError:
    pass
  return ""


CPU_XLA_FLAGS = CPU_XLA_FLAGS_BY_VENDOR.get(cpu_vendor(), ())  # This machine's.
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
