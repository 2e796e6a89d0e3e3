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

from a3_jax.atomic_file import write_atomic
from a3_jax.errors import UserError

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str, report=None) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl.

  A torn last line (a crash mid-write) is dropped and said through `report(message)`;
  any other bad line, or bytes that are not UTF-8, is a UserError naming file and line.
  """
  path = epath.Path(workdir) / METRICS_FILE
  if not path.is_file():
    return []
  try:
    text = path.read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  lines = text.split("\n")
  records = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError as e:
      if n == len(lines):  # no newline after it: the write was cut short
        if report is not None:
          report(f"{path}: dropped the torn last line {n} ({len(line)} characters)")
        break
      raise UserError(f"{path}, line {n}: not a JSON object ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
      raise UserError(f"{path}, line {n}: not a metrics record (a JSON object with an integer "
                      "'step')")
    records.append(record)
  return records


class MetricsWriter:
  """Appends records to metrics.jsonl and mirrors scalars to TensorBoard.

  Object stores (gs://) cannot append to a file: there the writer keeps the
  lines and rewrites the file every `sync_every_s` seconds, after each
  validation record and at close.
  """

  def __init__(self, workdir: str, resume_step: int | None = None, sync_every_s: float = 60.0,
               report=None):
    self.enabled = jax.process_index() == 0
    self.path = epath.Path(workdir) / METRICS_FILE
    if not self.enabled:
      return
    # The run re-logs every step after its checkpoint (all of them when starting
    # afresh), and a torn last line is dropped.
    records = [r for r in read_metrics(workdir, report) if r["step"] <= (resume_step or 0)]
    lines = [json.dumps(r) + "\n" for r in records]
    if self.path.exists():
      write_atomic(self.path, "".join(lines))
    from tensorboardX import SummaryWriter  # heavy import, only on the writer
    self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))
    self._lines = None if "://" not in workdir else lines
    self._file = self.path.open("a") if self._lines is None else None
    self._sync_every_s, self._synced = sync_every_s, time.monotonic()

  def _sync(self) -> None:
    write_atomic(self.path, "".join(self._lines))
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
