"""One metric writer: JSON lines (the source of truth for reports) plus TensorBoard.

Only process 0 writes. Rows are keyed by `step`. The loop writes an epoch's row
only once the checkpoint of that step is complete on disk (the row also travels in
the checkpoint, and is written from there if the run was killed in between), so
metrics.jsonl never runs ahead of the checkpoints. Rows past the restored
checkpoint (its newer checkpoints were deleted or damaged) are moved to
metrics_dropped.jsonl on resume, never simply deleted.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

METRICS_FILE = "metrics.jsonl"
DROPPED_FILE = "metrics_dropped.jsonl"


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

  def truncate_after(self, step: int) -> list[dict[str, Any]]:
    """Keeps only the rows with row['step'] <= step (and drops a torn last line).

    Returns:
      The rows removed; they are appended to metrics_dropped.jsonl first.
    """
    if not self.enabled or not os.path.exists(self.path):
      return []
    rows = read_rows(self.path)
    kept = [r for r in rows if r["step"] <= step]
    with open(self.path, "rb") as f:
      content = f.read()
    intact = not content or content.endswith(b"\n")  # A torn first row is torn too.
    if len(kept) == len(rows) and intact:
      return []
    dropped = rows[len(kept):]
    try:
      if dropped:
        with open(os.path.join(os.path.dirname(self.path), DROPPED_FILE), "a") as f:
          f.writelines(json.dumps(r) + "\n" for r in dropped)
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self.path)  # Atomic: a kill here leaves the old or the new file.
    except OSError as e:
      raise _write_error(self.path, e) from None
    return dropped

  def last_step(self) -> int:
    """The step of the last row (0 if none)."""
    rows = read_rows(self.path) if self.enabled else []
    return rows[-1]["step"] if rows else 0

  def write(self, row: dict[str, Any]) -> None:
    if not self.enabled:
      return
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
      raise _write_error(self.path, e) from None
    for key, value in row.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        self._tb.add_scalar(key, value, row["step"])

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _write_error(path: str, e: OSError):
  from rethinking import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return workdir_lib.WriteError(f"cannot write {path}: {e.strerror or e} [errno {e.errno}]")
