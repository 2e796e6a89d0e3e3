"""Progress of a long job outside training: done/total, time so far, and an ETA from the
rate so far (the first report includes compilation, so early ETAs run long)."""

from __future__ import annotations

import time


def clock(seconds: float) -> str:
  """'3m05s' (hours fold into minutes: '127m10s')."""
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
  """Call with the count done so far (and the total, where only the caller knows it);
  it reports at most about every `every` of the total, and at the end, through
  `report(line)`: 'LABEL: 3/12 UNIT (25%), 0m40s, ~2m00s left'. The clock starts
  when the Progress is made, or again at a call with done=0 (which reports nothing)."""

  def __init__(self, label: str, report, total: int | None = None, unit: str = "",
               every: float = 0.1):
    self.label, self.report, self.total, self.unit, self.every = label, report, total, unit, every
    self.started = time.perf_counter()
    self.last = 0

  def __call__(self, done: int, total: int | None = None) -> None:
    total = self.total = total or self.total
    if done == 0:
      self.started, self.last = time.perf_counter(), 0
      return
    if done - self.last < self.every * total and done < total:
      return
    self.last = done
    elapsed = time.perf_counter() - self.started
    eta = "done" if done >= total else (
        f"~{clock(elapsed / done * (total - done))} left" if done else "")
    unit = f" {self.unit}" if self.unit else ""
    self.report(f"{self.label}: {done}/{total}{unit} ({100 * done // total}%), "
                f"{clock(elapsed)}" + (f", {eta}" if eta else ""))
