"""SIGTERM and SIGINT (Ctrl-C) during training: save at an agreed step, then exit."""

from __future__ import annotations

import os
import signal
import sys

import jax
from jax.experimental import multihost_utils


class Preemption:
  """SIGTERM or SIGINT -> save and exit at a step the loop asks about with `reached(step)`.

  One process: a Python handler sets a flag; a second SIGINT (Ctrl-C) exits at once.
  Several: the signal may reach only some of them, so JAX's preemption service
  (whose own SIGTERM handler jax.distributed.initialize installed) picks the same
  step for all.
  """

  def __init__(self):
    self._several = jax.process_count() > 1
    self._requested = False
    self.signal_name = "SIGTERM"
    if not self._several:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._previous_int = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self._requested and signum == signal.SIGINT:
      print("second Ctrl-C: exiting now without saving", file=sys.stderr, flush=True)
      os._exit(130)
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      print("Ctrl-C: saving after this step (Ctrl-C again to exit at once)", file=sys.stderr,
            flush=True)
    self._requested = True

  def reached(self, step: int) -> bool:
    """Call once per step on every process."""
    if self._several:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def restore(self):
    if not self._several:
      signal.signal(signal.SIGTERM, self._previous)
      signal.signal(signal.SIGINT, self._previous_int)
