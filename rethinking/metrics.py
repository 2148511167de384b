"""One metric writer: JSON lines (the source of truth for reports) plus TensorBoard.

Only process 0 writes. Rows are keyed by `step`; on resume, rows past the restored
checkpoint are dropped first, so a run killed between writing a row and finishing
its checkpoint does not end up with the same epoch twice.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_rows(path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl file; a torn last line (killed mid-write) is ignored."""
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return rows


class MetricWriter:
  """Appends one JSON object per row to <workdir>/metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def truncate_after(self, step: int) -> None:
    """Keeps only the rows with row['step'] <= step (and drops a torn last line)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    rows = [r for r in read_rows(self.path) if r["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, self.path)  # Atomic: a kill here leaves the old or the new file.

  def write(self, row: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())
    for key, value in row.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        self._tb.add_scalar(key, value, row["step"])

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
