"""Joining a multi-process (multi-host) JAX run before any device is touched.

`jax.distributed.initialize()` auto-detects SLURM (srun) and Cloud TPU pods; an
explicit coordinator address, process count and process id work anywhere,
including several processes on one CPU machine (how the tests run it).
"""

from __future__ import annotations

import os

import jax


def _auto_detected() -> bool:
  """True where JAX's cluster detection would find more than one process."""
  slurm = int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1")) or 1) > 1
  tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
  return slurm or tpu_pod


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Initializes jax.distributed when asked to (explicit flags) or when a cluster is detected.

  Single-process runs (one GPU, a laptop) skip it.
  """
  explicit = coordinator_address is not None
  if not explicit and not _auto_detected():
    return
  # CPU devices in different processes talk through gloo (tests, CPU clusters).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
