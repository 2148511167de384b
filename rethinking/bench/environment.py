"""The machine a bench run measured: CPU model, its vector/matrix ISA flags and cores, the
XLA flags and `import rethinking`'s CPU defaults in effect, jax and its devices, the load
average and the CPU time the hypervisor stole. Two runs are comparable only with these.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
from typing import Any

# The ISA extensions that decide which kernels XLA's and PyTorch's CPU backends can use:
# 256- and 512-bit vectors, bf16 and int8 dot products, Intel's AMX tiles.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
  """Model name, vendor, the ISA_FLAGS present and the physical cores, from /proc/cpuinfo
  (its text may be given); platform's processor name where there is no such file."""
  if cpuinfo is None:
    cpuinfo = ""
    with contextlib.suppress(OSError):
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
  fields: dict[str, str] = {}
  cores = set()
  physical = "0"
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if not sep:
      continue
    key, value = key.strip(), value.strip()
    fields.setdefault(key, value)  # The first processor's; the others repeat them.
    if key == "physical id":
      physical = value
    elif key == "core id":
      cores.add((physical, value))
  present = set(fields.get("flags", "").split())
  return {"cpu": fields.get("model name") or platform.processor() or platform.machine(),
          "cpu_vendor": fields.get("vendor_id", ""),
          "cpu_flags": [f for f in ISA_FLAGS if f in present],
          "cpu_cores": len(cores) or None}


def xla_settings() -> dict[str, Any]:
  """XLA_FLAGS as jax sees them, and which of `import rethinking`'s CPU defaults are in it."""
  import rethinking  # pylint: disable=g-import-not-at-top
  xla_flags = os.environ.get("XLA_FLAGS", "")
  defaults = list(getattr(rethinking, "CPU_XLA_FLAGS", ()))
  return {"xla_flags": xla_flags,
          "rethinking_xla_defaults": os.environ.get("RETHINKING_XLA_DEFAULTS", "1"),
          "xla_defaults": defaults,
          "xla_defaults_in_effect": [f for f in defaults if f in xla_flags.split()]}


def environment(command: str = "rethinking.bench") -> dict[str, Any]:
  """Everything above, the jax versions and devices, the time and the load average now."""
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    usable = os.cpu_count()
  return {"time": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": " ".join([os.path.basename(sys.executable), "-m", command, *sys.argv[1:]]),
          **cpu_info(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "backend": jax.default_backend(), "device_count": jax.device_count(),
          "device": str(jax.devices()[0].device_kind), **xla_settings(),
          # A preloaded allocator (tcmalloc) changes CPU step times by up to 1.6x.
          "ld_preload": os.environ.get("LD_PRELOAD", ""),
          "load_average_start": list(os.getloadavg())}


def cpu_jiffies() -> list[int]:
  """/proc/stat's aggregate CPU counters (user nice system idle iowait irq softirq steal)."""
  try:
    with open("/proc/stat") as f:
      return [int(v) for v in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return []


def busy_and_steal(start: list[int], end: list[int]) -> dict[str, float]:
  """Shares of CPU time over the run: busy (all but idle) and stolen by the hypervisor."""
  if not start or not end:
    return {}
  delta = [b - a for a, b in zip(start, end)]
  total = max(sum(delta), 1)
  return {"cpu_busy_fraction": 1 - (delta[3] + delta[4]) / total,
          "cpu_steal_fraction": delta[7] / total}
