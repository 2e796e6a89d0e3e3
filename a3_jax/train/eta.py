"""How long a run's remaining work will take: steps, compilation and validation.

Steps are priced by the FLOPs model (flops.expected_seconds, each stage at its own
cost) scaled by what the run has measured: at start-up by the validation batch timed
then (forward passes, a third of a train step's FLOPs each: `calibrate`), and once
steady steps (not the first of a program, which compiles it) have run, by their
observed time over the model's. A
program not yet compiled (the A3 program after a `causal` stage) costs what the first
one's compilation did; before the first step, `compile_guess` (twice the validation
program's compilation, measured at start-up: a train step is a forward and a backward
pass). Validations cost what the one measured at start-up did, then what the last
one did.
"""

from __future__ import annotations

from a3_jax.flops import expected_seconds
from a3_jax.grouping import parse_strategy


class RunClock:
  """Expected seconds of the work left after a step; fed with what the run measures."""

  def __init__(self, job, curriculum, model_config, start: int, validation_s: float,
               compile_guess: float = 0.0):
    self.job, self.curriculum, self.start = job, curriculum, start
    tokens = job.batch_size * job.seq_len
    self.modelled = [expected_seconds(model_config, job.seq_len, tokens,
                                      curriculum.stage(s), job.train.objective)
                     for s in range(start, job.steps)]  # None: an unknown accelerator
    self.validation_s = validation_s
    self.compile_s: float | None = None
    self.compile_guess = compile_guess
    self.model_config, self.start_factor = model_config, 1.0
    self.observed = self.observed_model = 0.0  # steady steps: measured, modelled seconds
    self.steady = 0
    self.compiled: set[bool] = set()

  def _program(self, step: int) -> bool:
    return self.curriculum.stage(step).kind == "causal"

  def step_done(self, step: int, seconds: float) -> None:
    """Step `step` (0-based) took `seconds` (its first of a program: compilation too)."""
    program = self._program(step)
    if program not in self.compiled:
      self.compiled.add(program)
      modelled = self.modelled[step - self.start] or 0.0
      if self.compile_s is None:
        self.compile_s = max(seconds - modelled * self._factor(), 0.0)
      return
    self.observed += seconds
    self.steady += 1
    self.observed_model += self.modelled[step - self.start] or 0.0

  def validation_done(self, seconds: float) -> None:
    self.validation_s = seconds

  def calibrate(self, seconds: float, passes: int) -> None:
    """Scale the FLOPs model by `passes` forward passes of one batch taking `seconds`."""
    job = self.job
    train = expected_seconds(self.model_config, job.seq_len, job.batch_size * job.seq_len,
                             parse_strategy("ar"), job.train.objective)
    if train and seconds > 0:
      self.start_factor = seconds / (passes * train / 3)

  def _factor(self) -> float:
    return self.observed / self.observed_model if self.observed_model else self.start_factor

  def _step_seconds(self, step: int) -> float | None:
    modelled = self.modelled[step - self.start]
    if modelled is not None:
      return modelled * self._factor()
    return self.observed / self.steady if self.steady else None  # no model: the mean

  def validations(self, done: int, pending: bool = False) -> int:
    """Validations after `done` steps (and at `done` itself when `pending`)."""
    job = self.job
    return len([s for s in range(done if pending else done + 1, job.steps + 1)
                if s >= 1 and (s % job.eval_every == 0 or s == job.steps)])

  def remaining(self, next_step: int, pending: bool = False) -> float | None:
    """Seconds of steps [next_step, steps), their validations (`pending`: the one due
    at step next_step too, not yet run) and compilations."""
    job = self.job
    seconds = 0.0
    for step in range(next_step, job.steps):
      s = self._step_seconds(step)
      if s is None:
        return None
      seconds += s
    programs = {self._program(s) for s in range(next_step, job.steps)} - self.compiled
    seconds += len(programs) * (self.compile_guess if self.compile_s is None else self.compile_s)
    return seconds + self.validations(next_step, pending) * self.validation_s
