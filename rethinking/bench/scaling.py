"""The pmapped train step on 1..N fake CPU devices (`--xla_force_host_platform_device_count`,
one subprocess each). On a CPU this checks the code path, not speed: the devices share the
same cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

from rethinking.bench import steps
from rethinking.bench import tasks
from rethinking.bench import timing
from rethinking.bench.timing import Budget


def scaling_worker(num_devices: int, name: str, per_device: int, budget: Budget) -> dict[str, Any]:
  """In a process with `num_devices` CPU devices: the pmapped step's throughput."""
  import jax  # pylint: disable=g-import-not-at-top
  from rethinking import loop  # pylint: disable=g-import-not-at-top
  from rethinking import optim  # pylint: disable=g-import-not-at-top
  from rethinking import parallel  # pylint: disable=g-import-not-at-top
  from rethinking import step as step_lib  # pylint: disable=g-import-not-at-top
  from rethinking.models import get_model  # pylint: disable=g-import-not-at-top

  assert jax.local_device_count() == num_devices, jax.devices()
  name, size, _ = tasks.parse_model(name)
  model = get_model(name, num_classes=10, axis_name=parallel.AXIS)
  tx = optim.make_optimizer(optim.learning_rate_schedule(0.01, 0.95, 100), 0.9, 0.0)
  state = step_lib.create_train_state(jax.random.PRNGKey(0), model, (size, size, 3), tx)
  rng = np.random.default_rng(0)
  batch = {k: steps.shard(v, jax.local_devices()) for k, v in {
      "image": rng.integers(0, 256, (num_devices, per_device, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, (num_devices, per_device)).astype(np.int32)}.items()}
  train, _ = parallel.pmapped_steps()
  key = jax.random.PRNGKey(1)
  state, sums = parallel.replicated((state, loop.train_sums()))
  call = timing.carrying(train, {"state": state, "sums": sums}, batch, key)
  timing.block(call())
  t = timing.time_calls(call, budget.steps, budget.warmup, budget.max_seconds)
  return {"devices": num_devices, **t.row(num_devices * per_device)}


def bench_scaling(max_devices: int, name: str, per_device: int, budget: Budget,
                  compilation_cache: bool = False) -> dict[str, Any]:
  """Throughput of the pmapped step on 1..max_devices fake CPU devices (weak scaling)."""
  rows = []
  base = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  for n in range(1, max_devices + 1):
    env = dict(os.environ, XLA_FLAGS=" ".join(
        base + [f"--xla_force_host_platform_device_count={n}"]))
    cmd = [sys.executable, "-m", "rethinking.bench", f"--scaling_worker={n}",
           f"--scaling_model={name}", f"--batch_size={per_device}", f"--steps={budget.steps}",
           f"--warmup={budget.warmup}", f"--max_seconds={budget.max_seconds}",
           f"--compilation_cache={compilation_cache}"]
    proc = subprocess.run(cmd, cwd=tasks.REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
      rows.append({"devices": n, "error": proc.stderr[-2000:]})
      continue
    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  one = rows[0].get("images_per_s")
  for r in rows:
    if one and "images_per_s" in r:
      r["efficiency"] = r["images_per_s"] / (r["devices"] * one)
  return {"model": name, "per_device_batch": per_device, "path": "parallel.pmapped_steps",
          "note": "fake CPU devices share the same cores: this checks the code path, not speed",
          "rows": rows}
