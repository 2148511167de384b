"""A trained run as its workdir holds it: config.json, metrics.jsonl and run_info.json.

The sweep reads these to skip finished runs, the report to build tables and figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

from rethinking import metrics as metrics_lib


def is_finished(rows: list[dict[str, Any]], num_epochs: int) -> bool:
  """A run is finished once it wrote its last epoch or stopped at its target
  (stop_at_train_accuracy or stop_at_train_loss: the row then holds fit_step)."""
  return any(r.get("epoch", 0) >= num_epochs or "fit_step" in r for r in rows)


@dataclasses.dataclass
class Run:
  workdir: str
  config: dict[str, Any]
  rows: list[dict[str, Any]]
  info: dict[str, Any]

  @property
  def finished(self) -> bool:
    return is_finished(self.rows, self.config["num_epochs"])

  @property
  def fit_step(self) -> int | None:
    """The step at which the run met its stop criterion (stop_at_train_accuracy or
    stop_at_train_loss), if it did."""
    return next((r["fit_step"] for r in self.rows if "fit_step" in r), None)

  @property
  def last(self) -> dict[str, Any]:
    return self.rows[-1] if self.rows else {}


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def read_run(workdir: str) -> Run | None:
  """The run in `workdir`, or None when the trainer has not written its config yet."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    return None
  info_path = os.path.join(workdir, "run_info.json")
  return Run(workdir=workdir, config=_read_json(config_path),
             rows=metrics_lib.read_rows(os.path.join(workdir, metrics_lib.METRICS_FILE)),
             info=_read_json(info_path) if os.path.exists(info_path) else {})


def find_runs(root: str) -> Iterator[Run]:
  """Every run under `root` (any depth), in a stable order."""
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    if "config.json" in filenames:
      dirnames.clear()  # A workdir holds no other runs (its checkpoints are not runs).
      yield read_run(dirpath)
