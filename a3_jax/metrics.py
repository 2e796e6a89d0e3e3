"""Run metrics: `WORKDIR/metrics.jsonl` (one JSON object per line) and TensorBoard.

TensorBoard event files are written with tensorboardX (pure Python + protobuf),
because flax's and clu's writers need TensorFlow. Only process 0 writes.
WORKDIR may be a gs:// path (etils.epath; TensorBoard there needs
google-cloud-storage).
"""

from __future__ import annotations

import json
import time

import jax
from etils import epath

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
  """Appends records to metrics.jsonl and mirrors scalars to TensorBoard.

  Object stores (gs://) cannot append to a file: there the writer keeps the
  lines and rewrites the file every `sync_every_s` seconds, after each
  validation record and at close.
  """

  def __init__(self, workdir: str, resume_step: int | None = None, sync_every_s: float = 60.0):
    self.enabled = jax.process_index() == 0
    self.path = epath.Path(workdir) / METRICS_FILE
    if not self.enabled:
      return
    records = [r for r in read_metrics(workdir)
               if resume_step is None or r.get("step", 0) <= resume_step]
    lines = [json.dumps(r) + "\n" for r in records]
    if resume_step is not None:  # a resumed run re-logs the steps after its checkpoint
      tmp = self.path.parent / (METRICS_FILE + ".tmp")
      tmp.write_text("".join(lines))
      tmp.replace(self.path)
    from tensorboardX import SummaryWriter  # heavy import, only on the writer
    self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))
    self._lines = None if "://" not in workdir else lines
    self._file = self.path.open("a") if self._lines is None else None
    self._sync_every_s, self._synced = sync_every_s, time.monotonic()

  def _sync(self) -> None:
    self.path.write_text("".join(self._lines))
    self._synced = time.monotonic()

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    line = json.dumps(record) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      if "split" in record or time.monotonic() - self._synced > self._sync_every_s:
        self._sync()
    prefix = record.get("split", "train")
    for name, value in record.items():
      if name not in ("step", "split") and isinstance(value, (int, float)):
        self._tb.add_scalar(f"{prefix}/{name}", value, record["step"])

  def close(self) -> None:
    if self.enabled:
      if self._file is not None:
        self._file.close()
      else:
        self._sync()
      self._tb.close()
