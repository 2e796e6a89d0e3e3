"""The training loop: data, sharded state, curriculum, checkpoints, metrics, validation.

`run(job)` is what `a3-train` calls after parsing flags; every user-caused
problem is a UserError raised before anything in the workdir is written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
from etils import epath

from a3_jax import checkpoint as ckpt
from a3_jax import rundir
from a3_jax import sharding as shd
from a3_jax.atomic_file import write_atomic
from a3_jax.config import ModelConfig
from a3_jax.convert.loader import load_pretrained
from a3_jax.data.pipeline import make_eval_batches, make_train_iterator
from a3_jax.errors import UserError
from a3_jax.export import RUN_FLAGS, tokenizer_file
from a3_jax.flops import mfu_report
from a3_jax.grouping import parse_curriculum
from a3_jax.metrics import MetricsWriter, read_metrics
from a3_jax.progress import Progress
from a3_jax.tokenizer import (check_fits, fingerprint, load_tokenizer, save_tokenizer,
                               token_char_lengths)
from a3_jax.train import console
from a3_jax.train.config import (SCHEDULE_STEPS, Job, TrainConfig, model_config_for,
                                 resumed_flags, schedule_steps, validate_mesh, validate_plan)
from a3_jax.train.eta import RunClock
from a3_jax.train.resume import resume
from a3_jax.train.signals import Preemption
from a3_jax.train.state import init_state, state_from_params, state_shardings
from a3_jax.train.step import make_eval_step, make_train_step
from a3_jax.train.validation import EVAL_GROUPINGS, eval_source, evaluate


def initial(job: Job, mesh):
  """(model config, tokenizer, pretrained params or None).

  A run resuming from its own checkpoint does not read --init_from's weights: only its
  config, and the tokenizer the run saved in its workdir.
  """
  saved_tokenizer = job.tokenizer or tokenizer_file(job.workdir)
  platform = shd.mesh_platform(mesh)  # None: the mesh in context
  resuming = ckpt.has_checkpoint(job.workdir)
  if job.init_from and saved_tokenizer and resuming:
    return model_config_for(job, None, platform=platform), load_tokenizer(saved_tokenizer), None
  if job.init_from:  # the config refuses bad overrides before any weight is read
    model_config = model_config_for(job, None, platform=platform)
    params, _, tokenizer = load_pretrained(job.init_from, mesh=mesh)
    if job.tokenizer:
      tokenizer = load_tokenizer(job.tokenizer)
    return model_config, tokenizer, params
  # A resume without --tokenizer trains on the tokenizer the run saved, not the default.
  tokenizer = load_tokenizer(saved_tokenizer if resuming else job.tokenizer)
  return model_config_for(job, tokenizer.vocab_size, platform=platform), tokenizer, None


def run(job: Job) -> dict:
  """Trains (or resumes) and returns the last validation metrics.

  Every check that can refuse the job runs before the workdir lock is taken and
  anything is written.
  """
  rundir.check_workdir(job.workdir)
  read_metrics(job.workdir)  # a damaged metrics file is refused before any write
  curriculum = parse_curriculum(job.curriculum)
  mesh = shd.make_mesh(job.mesh)
  tc = job.train_config
  laid_out = schedule_steps(resumed_flags(job.workdir))
  if laid_out and laid_out != job.steps:  # resuming with another --steps
    tc = dataclasses.replace(tc, total_steps=laid_out)
  model_config, tokenizer, pretrained = initial(job, mesh)
  if tokenizer is None:  # an export saved without one
    raise UserError(f"--init_from={job.init_from} holds no tokenizer file: pass --tokenizer")
  validate_plan(job, model_config, curriculum)
  validate_mesh(job, mesh)
  check_fits(tokenizer, model_config.vocab_size, "the model")

  local_batch = job.batch_size // jax.process_count()
  data_iter = make_train_iterator(job.data, tokenizer, seq_len=job.seq_len,
                                  batch_size=local_batch, seed=job.seed,
                                  data_dir=job.data_dir, worker_count=job.worker_count,
                                  overlong=job.sft_overlong)
  eval_spec, eval_split = eval_source(job.data, job.eval_data)
  eval_batches = make_eval_batches(eval_spec, tokenizer, seq_len=job.seq_len, split=eval_split,
                                   data_dir=job.data_dir, batch_size=local_batch,
                                   max_batches=job.eval_batches, overlong=job.sft_overlong)
  if not eval_batches or not any(b["segment_ids"].any() for b in eval_batches):
    raise UserError(f"validation data {eval_spec} gives no tokens "
                    "(set --eval_data to a source with text)")

  with rundir.locked(job.workdir, enabled=jax.process_index() == 0), jax.set_mesh(mesh):
    shardings = state_shardings(model_config, tc, mesh)
    tokenizer_id = fingerprint(tokenizer)
    manager, resume_step, state = resume(job, tc, mesh, model_config, shardings, data_iter,
                                         tokenizer_id)
    if resume_step is not None and resume_step >= job.steps:
      manager.close()
      print(f"{job.workdir} already holds the checkpoint of step {resume_step} "
            f"(--steps={job.steps}): nothing to do", flush=True)
      return {}
    if resume_step is not None:
      print(f"resumed from step {resume_step} in {job.workdir}", flush=True)
    if state is None:
      state = (state_from_params(pretrained, model_config, tc, mesh) if pretrained is not None
               else init_state(model_config, tc, jax.random.key(job.seed), mesh))
    if laid_out and laid_out != job.steps:
      console.warn(console.schedule_note(job, tc))
    _write_run_files(job, tc, model_config, tokenizer)
    char_lengths = (token_char_lengths(tokenizer, model_config.vocab_size)
                    if tc.objective == "a3" and tc.count_first_group else None)
    return _loop(_Run(job, tc, curriculum, mesh, model_config, shardings, data_iter,
                      eval_batches, manager, resume_step, tokenizer_id, char_lengths), state)


def _write_run_files(job: Job, tc: TrainConfig, model_config: ModelConfig, tokenizer) -> None:
  if jax.process_index():
    return
  run_dir = epath.Path(job.workdir)
  run_dir.mkdir(parents=True, exist_ok=True)
  write_atomic(run_dir / "config.json", model_config.to_json())
  flags_json = {**dataclasses.asdict(job), SCHEDULE_STEPS: tc.total_steps}
  write_atomic(run_dir / RUN_FLAGS, json.dumps(flags_json, indent=2) + "\n")
  save_tokenizer(tokenizer, job.workdir)


def _meta(job: Job, model_config: ModelConfig, tokenizer_id: str) -> dict:
  """What a checkpoint records of its run; a resume must agree on the keys of
  checkpoint.RESUME_FLAGS (`tokenizer`: its fingerprint)."""
  return {"model_config": model_config.to_dict(), "curriculum": job.curriculum,
          "data": job.data, "seq_len": job.seq_len, "batch_size": job.batch_size,
          "seed": job.seed, "objective": job.train.objective, "tokenizer": tokenizer_id}


@dataclasses.dataclass
class _Run:
  """What the step loop of one run works with."""

  job: Job
  tc: TrainConfig
  curriculum: Any
  mesh: Any
  model_config: ModelConfig
  shardings: Any
  data_iter: Any
  eval_batches: list
  manager: Any
  resume_step: int | None
  tokenizer_id: str  # tokenizer.fingerprint: a resume must use the same tokenizer
  char_lengths: Any = None  # [V] characters per token id: validation NLL per character


def _record(r: _Run, step: int, metrics, tick: float, started: float) -> dict:
  """The metrics.jsonl record of `step` (0-based) from its fetched metrics."""
  now = time.perf_counter()
  record = {"step": step + 1, "stage": r.curriculum.stage_name(step),
            **{k: float(v) for k, v in metrics.items() if k != "stage"},
            "tokens_per_s": r.job.batch_size * r.job.seq_len / (now - tick),
            "elapsed_s": now - started}
  record.update(mfu_report(r.model_config, r.job.seq_len, record["tokens_per_s"],
                           r.curriculum.stages[int(metrics["stage"])][0], r.tc.objective))
  return record


def _loop(r: _Run, state):
  """Steps until --steps, SIGTERM or Ctrl-C, or a non-finite step (see make_train_step).
  The host fetches step t-1's metrics after step t is dispatched, so the device never
  waits on the host between steps; evals and checkpoints first write the pending step's
  record (a non-finite step thus stops the run before any later save)."""
  job = r.job
  train_step = make_train_step(r.model_config, r.tc, r.curriculum, r.mesh, r.shardings)
  eval_step = make_eval_step(r.model_config, r.tc, r.mesh, r.shardings)
  causal_step = (make_eval_step(r.model_config, dataclasses.replace(r.tc, objective="ar"),
                                r.mesh, r.shardings)
                 if r.tc.objective == "a3" and r.curriculum.has_causal else None)
  seed_key = jax.random.key(job.seed)
  eval_key = jax.random.fold_in(seed_key, 2**31 - 1)  # fixed: evals are comparable
  writer = MetricsWriter(job.workdir, r.resume_step, report=console.warn)
  preemption = Preemption()
  start = int(state.step)

  def validate(params, batches=r.eval_batches, progress=None):
    return evaluate(eval_step, params, batches, eval_key, r.mesh, r.tc.objective,
                    r.char_lengths, causal_step, progress)

  # Start-up: compile the validation and time one batch of it, to price every validation.
  first = time.perf_counter()
  validate(state.params, r.eval_batches[:1])
  second = time.perf_counter()
  validate(state.params, r.eval_batches[:1])
  batch_s = time.perf_counter() - second
  validation_s = batch_s * len(r.eval_batches)
  run_clock = RunClock(job, r.curriculum, r.model_config, start, validation_s,
                       compile_guess=2 * max(second - first - batch_s, 0.0))
  run_clock.calibrate(batch_s, (1 if r.tc.objective == "mdm" else len(EVAL_GROUPINGS))
                      + (causal_step is not None))
  expected = run_clock.remaining(start)
  if expected is not None:
    expected += time.perf_counter() - first  # this start-up's time too
  validations = run_clock.validations(start)
  console.banner(job, r.model_config, state.params, start,
                 expected, validations, validation_s)
  skipped = 0
  last_saved = r.resume_step
  last_eval: dict = {}
  tick = started = time.perf_counter()
  pending = None  # (step, metrics still on the device)

  def _nonfinite(step, metrics):
    nonlocal skipped
    if not job.skip_nonfinite:
      raise UserError(
          f"step {step + 1}: non-finite loss, gradient norm or updated params (loss "
          f"{float(metrics['loss']):.4g}, grad norm {float(metrics['grad_norm']):.4g}); the "
          "update was not applied and "
          f"the run stops (last checkpoint: step {last_saved or 'none'}); lower --lr, or "
          "pass --skip_nonfinite to skip such batches")
    skipped += 1
    console.warn(f"step {step + 1}: non-finite loss, gradient norm or updated params, batch "
                 f"skipped ({skipped} so far)")

  def flush():
    nonlocal pending, tick
    if pending is None:
      return
    step, metrics = pending
    pending = None
    metrics = jax.device_get(metrics)
    if metrics.pop("nonfinite"):  # the step kept the old params and optimizer state
      _nonfinite(step, metrics)
    record = _record(r, step, metrics, tick, started)
    if job.skip_nonfinite:
      record["skipped_nonfinite"] = skipped
    now = time.perf_counter()
    compiled = run_clock.compile_s
    run_clock.step_done(step, now - tick)
    tick = now
    writer.write(record)
    if (step + 1) % 10 == 0 or step == start or run_clock.compile_s != compiled:
      console.progress(job, record, tick - started, run_clock.remaining(step + 1, True),
                       run_clock.compile_s if run_clock.compile_s != compiled else None)

  try:
    for step in range(start, job.steps):
      batch = shd.shard_batch(next(r.data_iter), r.mesh)
      state, metrics = train_step(state, batch, seed_key, step)
      flush()  # step - 1's, while this step runs
      pending = (step, metrics)
      done = step + 1 == job.steps
      preempted = preemption.reached(step + 1)
      evaluate_now = (step + 1) % job.eval_every == 0 or done
      save_now = (step + 1) % job.save_every == 0 or done or preempted
      if evaluate_now or save_now:
        flush()
      if evaluate_now:
        began = time.perf_counter()
        shown = run_clock.validation_s > 10  # a long validation shows its progress
        last_eval = validate(state.params, progress=Progress(
            f"step {step + 1} validation", print, unit="batch passes", every=0.25)
            if shown and jax.process_index() == 0 else None)
        run_clock.validation_done(time.perf_counter() - began)
        writer.write({"step": step + 1, "split": "validation", **last_eval})
        console.validation(step + 1, last_eval)
        if hasattr(r.data_iter, "realised_shares"):  # a --data=mix: (data.mixture)
          shares = r.data_iter.realised_shares()
          writer.write({"step": step + 1, "split": "data", "sources": list(shares),
                        "weights": [s["weight"] for s in shares.values()],
                        "token_shares": [s["share"] for s in shares.values()]})
          console.mixture(step + 1, shares)
        tick = time.perf_counter()
      if save_now:
        ckpt.save(r.manager, step + 1, state, r.data_iter,
                  _meta(job, r.model_config, r.tokenizer_id), force=True)
        last_saved = step + 1
      if preempted:
        print(f"{preemption.signal_name}: saved step {step + 1}, exiting", flush=True)
        break
    flush()
  finally:
    try:
      ckpt.finish(r.manager)
    finally:
      writer.close()
      preemption.restore()
  if jax.process_index() == 0 and int(state.step) == job.steps:
    console.done(job, time.perf_counter() - first, expected)
  return last_eval
