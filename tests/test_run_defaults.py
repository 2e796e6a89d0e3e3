"""a3-train's defaults that follow the start, the run's time estimate, its closing head."""

import pytest
from absl import flags

from a3_jax.config import get_preset
from a3_jax.grouping import parse_curriculum
from a3_jax.train import config, console
from a3_jax.train.eta import RunClock


def _job(argv, monkeypatch, saved=None):
  monkeypatch.setattr(config, "resumed_flags", lambda workdir: saved or {})
  fv = flags.FlagValues()
  config.define_flags(fv)
  fv(["a3-train", *argv])
  return config.job_from_flags(fv)


def test_defaults_follow_the_start(monkeypatch):
  scratch = _job([], monkeypatch)
  assert scratch == config.Job() and scratch.curriculum.startswith("causal:360")
  adapted = _job(["--init_from=hf:/m", "--steps=100"], monkeypatch)
  assert adapted.curriculum == "ar:20,block:2:20,block:4:20,perm:4:20,perm:8:20"
  assert (adapted.train.lr, adapted.train.warmup_steps) == (config.PAPER_LR, 10)
  assert _job(["--init_from=hf:/m", "--steps=3"], monkeypatch).curriculum == \
      "ar:1,block:2:1,block:4:1"
  given = _job(["--init_from=hf:/m", "--lr=1e-4", "--curriculum=ar:5"], monkeypatch)
  assert (given.curriculum, given.train.lr) == ("ar:5", 1e-4)
  for objective in ("ar", "mdm"):
    job = _job([f"--objective={objective}", "--steps=60"], monkeypatch)
    assert job.curriculum == "ar:60" and job.train.lr == 2e-3


def test_a_resumed_run_keeps_its_own_layout(monkeypatch):
  saved = {"curriculum": "ar:7,perm:4:7", "steps": 14, "train": {"lr": 3e-4, "warmup_steps": 2}}
  job = _job(["--init_from=hf:/m", "--steps=30"], monkeypatch, saved)
  assert (job.curriculum, job.train.lr, job.train.warmup_steps) == ("ar:7,perm:4:7", 3e-4, 2)
  assert config.schedule_steps(saved) == 14
  assert config.schedule_steps({**saved, config.SCHEDULE_STEPS: 20}) == 20


def test_closing_head_follows_what_was_trained():
  job = config.Job(steps=60)
  assert console.trained_heads(job)[0] == "content" and "inside the 'causal'" in \
      console.trained_heads(job)[1]
  assert console.trained_heads(config.Job(steps=361)) == ("query", None)
  ar = config.Job(curriculum="ar:9", train=config.TrainConfig(objective="ar"))
  assert console.trained_heads(ar)[0] == "content"


def test_run_clock_prices_steps_compilation_and_validation():
  job = config.Job(steps=40, eval_every=10, curriculum="causal:20,ar:20")
  clock = RunClock(job, parse_curriculum(job.curriculum), get_preset("tiny"), 0, 3.0)
  model = list(clock.modelled)
  assert clock.validations(0) == 4 and clock.validations(10) == 3
  assert clock.validations(10, pending=True) == 4
  assert clock.remaining(0) == pytest.approx(sum(model) + 4 * 3.0)
  clock.step_done(0, 5.0 + model[0])  # the causal program compiles: 5 s
  for step in range(1, 11):
    clock.step_done(step, 2 * model[step])  # twice the FLOPs model
  clock.validation_done(4.0)
  left = clock.remaining(11)
  # steps at twice the model, the A3 program's compilation, validations at 20, 30, 40
  assert left == pytest.approx(2 * sum(model[11:]) + 5.0 + 3 * 4.0, rel=1e-6)


def test_run_clock_calibrates_from_the_start_up_validation_batch():
  job = config.Job(steps=10, eval_every=10, curriculum="ar:10")
  clock = RunClock(job, parse_curriculum(job.curriculum), get_preset("tiny"), 0, 0.0)
  model = sum(clock.modelled)
  clock.calibrate(seconds=clock.modelled[0] / 3 * 2 * 5.0, passes=2)  # 5x slower than modelled
  assert clock.remaining(0) == pytest.approx(5.0 * model)
