"""Run metrics: `WORKDIR/metrics.jsonl` (one JSON object per line) and TensorBoard.

TensorBoard event files are written with tensorboardX (pure Python + protobuf),
because flax's and clu's writers need TensorFlow. Only process 0 writes.
"""

from __future__ import annotations

import json
import os

import jax

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Appends records to metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    if not self.enabled:
      return
    if resume_step is not None:
      self._drop_after(resume_step)
    from tensorboardX import SummaryWriter  # heavy import, only on the writer
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._file = open(self.path, "a")

  def _drop_after(self, step: int) -> None:
    """A resumed run re-logs the steps after its checkpoint: drop the killed run's."""
    kept = [r for r in read_metrics(os.path.dirname(self.path)) if r.get("step", 0) <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.path)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    prefix = record.get("split", "train")
    for name, value in record.items():
      if name not in ("step", "split") and isinstance(value, (int, float)):
        self._tb.add_scalar(f"{prefix}/{name}", value, record["step"])

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()
