"""The training loop: data, sharded state, curriculum, checkpoints, metrics, eval.

`run(job)` is what `a3-train` calls after parsing flags; every user-caused
problem is a UserError raised before anything in the workdir is written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import time
from typing import Any

import jax
from etils import epath
from jax.experimental import multihost_utils

from a3_jax import checkpoint as ckpt
from a3_jax import cpu_tuning
from a3_jax import rundir
from a3_jax import sharding as shd
from a3_jax.config import ModelConfig, get_preset, resolve
from a3_jax.convert.loader import load_pretrained, read_config
from a3_jax.tokenizer import save_tokenizer, token_char_lengths
from a3_jax.data.pipeline import make_eval_batches, make_train_iterator
from a3_jax.tokenizer import load_tokenizer
from a3_jax.export import RUN_FLAGS, tokenizer_file
from a3_jax.flops import expected_seconds, mfu_report
from a3_jax.grouping import parse_curriculum, parse_strategy, sample_groups
from a3_jax.metrics import MetricsWriter, read_metrics
from a3_jax.train_step import (TrainConfig, init_state, make_eval_step, make_train_step,
                               state_from_params, state_shardings)
from a3_jax.errors import UserError

EVAL_GROUPINGS = ("ar", "perm:4")
FLAGS_FILE = RUN_FLAGS  # the run's Job; a3-export copies it (a3-eval reads seq_len)


@dataclasses.dataclass(frozen=True)
class Job:
  """Everything one training run is told (the flags of a3-train)."""

  workdir: str = "runs/default"
  preset: str = "small"
  steps: int = 700
  batch_size: int = 8
  seq_len: int = 256
  # The 10-minute CPU default: a causal LM first (the AR model A3 adapts from, at about
  # half an A3 step's cost), then the A3 curriculum (experiments/cpu_default).
  curriculum: str = "causal:360,ar:50,block:4:50,mix:ar=0.5,perm:4=0.5:240"
  data: str = "shakespeare"
  eval_data: str | None = None
  data_dir: str | None = None
  tokenizer: str | None = None
  mesh: str = "data:-1"
  seed: int = 0
  eval_every: int = 100
  eval_batches: int = 8
  save_every: int = 100
  max_to_keep: int = 3
  init_from: str | None = None
  model_overrides: tuple[tuple[str, str], ...] = ()
  train: TrainConfig = TrainConfig(lr=2e-3, warmup_steps=50)  # the 10-minute CPU default
  worker_count: int = 0
  skip_nonfinite: bool = False  # skip (and count) a batch with a non-finite loss or grad norm


class _Preemption:
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


def model_config_for(job: Job, vocab_size: int | None,
                     init_config: ModelConfig | None = None,
                     platform: str | None = None) -> ModelConfig:
  """THE model config of a run (a3-train and a3-dry-run both call this).

  From scratch: --preset with the tokenizer's `vocab_size` and the --model overrides.
  With --init_from: that checkpoint's config (`init_config`, read from --init_from
  when not given) with the --model overrides of runtime settings only. `platform`:
  of the devices the run is for (default: sharding.mesh_platform()), whose defaults
  (cpu_tuning.model_overrides) the --model flags override.
  """
  overrides = (cpu_tuning.model_overrides(platform or shd.mesh_platform())
               + tuple(job.model_overrides))
  if job.init_from:
    base = read_config(job.init_from) if init_config is None else init_config
    return resolve(base, overrides, checkpoint=f"--init_from={job.init_from}")
  return resolve(get_preset(job.preset), overrides, vocab_size=vocab_size)


def validate_plan(job: Job, model_config: ModelConfig, curriculum) -> None:
  """The checks of a job that need no devices (a3-dry-run runs them too)."""
  check_numbers(job)
  if job.seq_len > model_config.max_seq_len:
    raise UserError(f"--seq_len={job.seq_len} exceeds the model's max_seq_len "
                     f"({model_config.max_seq_len})")
  if curriculum.has_causal and job.train.objective != "a3":
    raise UserError(f"a 'causal' curriculum stage belongs to objective 'a3' (it trains the "
                     f"content stream before the A3 stages); objective "
                     f"{job.train.objective!r} has one objective throughout")
  if model_config.attention == "kernel":
    k = model_config.attention_group_size
    for strategy, _ in curriculum.stages:
      if strategy.kind == "causal":
        continue
      if strategy.kind == "mix" or (strategy.kind != "ar" and strategy.k != k) or (
          strategy.kind == "ar" and k != 1):
        raise UserError(f"attention=kernel assumes groups of attention_group_size={k}; "
                         f"stage {strategy.name!r} differs (use attention=chunked)")


def planned_config(job: Job, init_config: ModelConfig | None = None,
                   platform: str | None = None) -> ModelConfig:
  """The model config `run(job)` trains on `platform`'s devices, checked against the
  curriculum, without devices or weights (a3-dry-run). `init_config` stands in for
  --init_from's config."""
  vocab_size = None if job.init_from else load_tokenizer(job.tokenizer).vocab_size
  model_config = model_config_for(job, vocab_size, init_config, platform)
  validate_plan(job, model_config, parse_curriculum(job.curriculum))
  return model_config


def validate_mesh(job: Job, mesh) -> None:
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if rows % jax.process_count():  # each process loads the rows of its own devices
    raise UserError(f"--mesh={job.mesh}: data*fsdp ({rows}) must be a multiple of the "
                     f"number of processes ({jax.process_count()})")
  check_batch_rows(job, rows)


def check_batch_rows(job: Job, rows: int) -> None:
  """The global batch splits evenly over `rows` = data*fsdp devices and grad_accum."""
  if job.batch_size % (rows * job.train.grad_accum):
    raise UserError(f"--batch_size={job.batch_size} must be divisible by data*fsdp "
                    f"({rows}) * grad_accum ({job.train.grad_accum})")


def check_numbers(job: Job) -> None:
  """Out-of-range counts, each naming its flag (the float flags: TrainConfig)."""
  for name in ("steps", "batch_size", "seq_len", "eval_every", "save_every", "eval_batches",
               "max_to_keep"):
    if getattr(job, name) < 1:
      raise UserError(f"--{name} must be >= 1, got {getattr(job, name)}")
  if job.worker_count < 0:
    raise UserError(f"--worker_count must be >= 0, got {job.worker_count}")


def _initial(job: Job, mesh):
  """(model config, tokenizer, pretrained params or None).

  A run resuming from its own checkpoint does not read --init_from's weights: only its
  config, and the tokenizer the run saved in its workdir.
  """
  saved_tokenizer = job.tokenizer or tokenizer_file(job.workdir)
  platform = shd.mesh_platform(mesh)  # None: the mesh in context
  if job.init_from and saved_tokenizer and ckpt.has_checkpoint(job.workdir):
    return model_config_for(job, None, platform=platform), load_tokenizer(saved_tokenizer), None
  if job.init_from:  # the config refuses bad overrides before any weight is read
    model_config = model_config_for(job, None, platform=platform)
    params, _, tokenizer = load_pretrained(job.init_from, mesh=mesh)
    if job.tokenizer:
      tokenizer = load_tokenizer(job.tokenizer)
    return model_config, tokenizer, params
  tokenizer = load_tokenizer(job.tokenizer)
  return model_config_for(job, tokenizer.vocab_size, platform=platform), tokenizer, None


def run(job: Job) -> dict:
  """Trains (or resumes) and returns the last validation metrics.

  Every check that can refuse the job runs before the workdir lock is taken and
  anything is written.
  """
  check_numbers(job)
  rundir.check_workdir(job.workdir)
  read_metrics(job.workdir)  # a damaged metrics file is refused before any write
  curriculum = parse_curriculum(job.curriculum)
  mesh = shd.make_mesh(job.mesh)
  tc = dataclasses.replace(job.train, total_steps=job.steps)
  model_config, tokenizer, pretrained = _initial(job, mesh)
  validate_plan(job, model_config, curriculum)
  validate_mesh(job, mesh)
  if tokenizer.vocab_size > model_config.vocab_size:
    raise UserError(f"tokenizer has {tokenizer.vocab_size} ids but the model only "
                     f"{model_config.vocab_size}")

  local_batch = job.batch_size // jax.process_count()
  data_iter = make_train_iterator(job.data, tokenizer, seq_len=job.seq_len,
                                  batch_size=local_batch, seed=job.seed,
                                  data_dir=job.data_dir, worker_count=job.worker_count)
  eval_spec, eval_split = _eval_source(job)
  eval_batches = make_eval_batches(eval_spec, tokenizer, seq_len=job.seq_len, split=eval_split,
                                   data_dir=job.data_dir, batch_size=local_batch,
                                   max_batches=job.eval_batches)
  if not eval_batches or not any(b["segment_ids"].any() for b in eval_batches):
    raise UserError(f"validation data {_eval_source(job)[0]} gives no tokens "
                    "(set --eval_data to a source with text)")

  with rundir.locked(job.workdir, enabled=jax.process_index() == 0), jax.set_mesh(mesh):
    shardings = state_shardings(model_config, tc, mesh)
    manager, resume_step, state = _resume(job, tc, mesh, model_config, shardings, data_iter)
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
    _write_run_files(job, model_config, tokenizer)
    char_lengths = (token_char_lengths(tokenizer, model_config.vocab_size)
                    if tc.objective == "a3" and tc.count_first_group else None)
    return _loop(_Run(job, tc, curriculum, mesh, model_config, shardings, data_iter,
                      eval_batches, manager, resume_step, char_lengths), state)


def _resume(job: Job, tc: TrainConfig, mesh, model_config, shardings, data_iter):
  """(manager, resume step or None, restored state or None).

  The newest intact checkpoint is restored; newer damaged ones are named, moved to
  WORKDIR/damaged_checkpoints/ and the fallback said. If every one is damaged the
  run is refused rather than started over.
  """
  manager = ckpt.make_manager(job.workdir, job.max_to_keep)
  if manager.latest_step() is None:
    return manager, None, None
  shapes = jax.eval_shape(lambda: init_state(model_config, tc, jax.random.key(0), mesh))
  target = ckpt.abstract_like(shapes, shardings)

  def load(step):
    ckpt.check_compatible(ckpt.read_meta(manager, step), model_config, job.workdir)
    return ckpt.restore(manager, step, target, data_iter)

  step, state, damaged = ckpt.intact_step(manager, load)
  if step is None:
    manager.close()
    raise UserError(f"every checkpoint in {ckpt.checkpoint_dir(job.workdir)} is damaged ("
                    + "; ".join(f"step {s}: {w}" for s, w in damaged)
                    + "); move checkpoints/ away to start over")
  if damaged:
    for bad, what in damaged:
      _warn(f"checkpoint step {bad} in {manager.directory} is damaged: {what}")
    manager.close()
    ckpt.set_aside(job.workdir, [s for s, _ in damaged])
    manager = ckpt.make_manager(job.workdir, job.max_to_keep)
    print(f"warning: resuming from step {step}, the newest intact checkpoint", file=sys.stderr,
          flush=True)
  return manager, step, state


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def _eval_source(job: Job) -> tuple[str, str]:
  """(source spec, split) of validation data: --eval_data, else the validation split
  of --data where it has one (shakespeare, tfds), else --data itself."""
  if job.eval_data:
    return job.eval_data, "train"
  if job.data.startswith(("text:", "arrayrecord:")):
    print(f"warning: --data={job.data} has no validation split and --eval_data is unset: "
          "validation metrics are measured on training files", flush=True)
    return job.data, "train"
  if job.data.startswith("tfds:") and job.data.count(":") >= 2:
    return job.data, "train"  # an explicit split: make_source reads it from the spec
  return job.data, "validation"


def _write_run_files(job: Job, model_config: ModelConfig, tokenizer) -> None:
  if jax.process_index():
    return
  run_dir = epath.Path(job.workdir)
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / "config.json").write_text(model_config.to_json())
  (run_dir / FLAGS_FILE).write_text(json.dumps(dataclasses.asdict(job), indent=2) + "\n")
  save_tokenizer(tokenizer, job.workdir)


def _meta(job: Job, model_config: ModelConfig) -> dict:
  return {"model_config": model_config.to_dict(), "curriculum": job.curriculum,
          "data": job.data, "seq_len": job.seq_len, "batch_size": job.batch_size,
          "seed": job.seed, "objective": job.train.objective}


def evaluate(eval_step, params, batches, seed_key, mesh, objective: str = "a3",
             char_lengths=None, causal_step=None) -> dict:
  """Exact NLL per token of the validation batches under each EVAL_GROUPINGS entry
  (objective 'mdm': its NELBO per token, as nll_mdm), and per character
  (`nll_ar_per_char`, ...) where `char_lengths` [V] (tokenizer.token_char_lengths)
  is given: the same summed NLL over the characters the scored tokens spell.
  `causal_step` (a curriculum with a 'causal' stage): also the content stream's
  next-token NLL, as nll_causal (each document's first token unscored).

  Groups are drawn for the global batch, so the result does not depend on the
  number of processes.
  """
  out = {}
  chars = None
  if char_lengths is not None:  # every non-padding token is scored (count_first_group)
    chars = sum(int(char_lengths[b["tokens"]][b["segment_ids"] != 0].sum()) for b in batches)
  for name in ("mdm",) if objective == "mdm" else EVAL_GROUPINGS:
    strategy = parse_strategy("ar" if name == "mdm" else name)  # mdm ignores the groups
    draw = jax.jit(functools.partial(sample_groups, strategy),
                   out_shardings=shd.batch_sharding(mesh))
    nll = count = 0.0
    for i, batch in enumerate(batches):
      batch = shd.shard_batch(batch, mesh)
      groups = draw(jax.random.fold_in(seed_key, i), batch["segment_ids"], batch["positions"])
      stats = eval_step(params, batch, groups)
      nll += float(stats["nll"])
      count += float(stats["count"])
    out[f"nll_{name.replace(':', '')}"] = nll / max(count, 1.0)
    if chars:
      out[f"nll_{name.replace(':', '')}_per_char"] = nll / chars
  if causal_step is not None:
    stats = [causal_step(params, b, b["positions"])
             for b in (shd.shard_batch(b, mesh) for b in batches)]
    out["nll_causal"] = (sum(float(s["nll"]) for s in stats)
                         / max(sum(float(s["count"]) for s in stats), 1.0))
  out["eval_tokens"] = count
  return out


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
  writer = MetricsWriter(job.workdir, r.resume_step, report=_warn)
  preemption = _Preemption()
  start = int(state.step)
  _banner(job, r.tc, r.curriculum, r.model_config, state, start)
  skipped = 0
  last_saved = r.resume_step
  last_eval: dict = {}
  tick = started = time.perf_counter()
  pending = None  # (step, metrics still on the device)

  def _nonfinite(step, metrics):
    nonlocal skipped
    if not job.skip_nonfinite:
      raise UserError(
          f"step {step + 1}: non-finite loss or gradient norm (loss {float(metrics['loss']):.4g}"
          f", grad norm {float(metrics['grad_norm']):.4g}); the update was not applied and "
          f"the run stops (last checkpoint: step {last_saved or 'none'}); lower --lr, or "
          "pass --skip_nonfinite to skip such batches")
    skipped += 1
    _warn(f"step {step + 1}: non-finite loss or gradient norm, batch skipped ({skipped} so far)")

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
    tick = time.perf_counter()
    writer.write(record)
    if (step + 1) % 10 == 0 or step == start:
      kernel = (f" kernel rows {record['kernel_rows']:.0f}/"
                f"{record['kernel_rows'] + record['fallback_rows']:.0f}"
                if "kernel_rows" in record else "")
      eta = (tick - started) / (step + 1 - start) * (job.steps - step - 1)
      print(f"step {step + 1}/{job.steps} [{record['stage']}] loss {record['loss']:.4f} "
            f"lr {record['lr']:.2e} tok/s {record['tokens_per_s']:.0f}{kernel} "
            f"elapsed {_clock(tick - started)} ETA {_clock(eta)}", flush=True)

  try:
    for step in range(start, job.steps):
      batch = shd.shard_batch(next(r.data_iter), r.mesh)
      state, metrics = train_step(state, batch, seed_key)
      flush()  # step - 1's, while this step runs
      pending = (step, metrics)
      done = step + 1 == job.steps
      preempted = preemption.reached(step + 1)
      evaluate_now = (step + 1) % job.eval_every == 0 or done
      save_now = (step + 1) % job.save_every == 0 or done or preempted
      if evaluate_now or save_now:
        flush()
      if evaluate_now:
        last_eval = evaluate(eval_step, state.params, r.eval_batches, eval_key, r.mesh,
                             r.tc.objective, r.char_lengths, causal_step)
        writer.write({"step": step + 1, "split": "validation", **last_eval})
        print(f"step {step + 1} validation " + " ".join(
            f"{k} {v:.4f}" + ("/char" if k.endswith("_per_char") else "/token")
            for k, v in last_eval.items() if k.startswith("nll")), flush=True)
        tick = time.perf_counter()
      if save_now:
        ckpt.save(r.manager, step + 1, state, r.data_iter, _meta(job, r.model_config),
                  force=True)
        last_saved = step + 1
      if preempted:
        print(f"{preemption.signal_name}: saved step {step + 1}, exiting", flush=True)
        break
    flush()
  finally:
    r.manager.wait_until_finished()
    r.manager.close()
    writer.close()
    preemption.restore()
  if jax.process_index() == 0 and int(state.step) == job.steps:
    out = job.workdir.rstrip("/").split("/")[-1] or "run"
    print(f"done in {_clock(time.perf_counter() - started)}. Results: {job.workdir}/metrics.jsonl "
          f"(curves: a3-plot {job.workdir}); flags: {job.workdir}/{FLAGS_FILE}\n"
          f"export: a3-export --workdir={job.workdir} --out=exports/{out}\n"
          f"then:   a3-generate --checkpoint=exports/{out} --prompt=\"ROMEO.\" "
          f"--max_new_tokens=64", flush=True)
  return last_eval


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s"


def _banner(job: Job, tc, curriculum, model_config: ModelConfig, state, start: int) -> None:
  """The run's first line: preset, size, workdir, and a rough expected duration."""
  if jax.process_index():
    return
  params = sum(x.size for x in jax.tree.leaves(state.params))
  tokens = (job.steps - start) * job.batch_size * job.seq_len
  seconds = 0.0  # each remaining stage at its own cost
  for strategy, left in curriculum.steps_run(job.steps, start):
    if left:
      seconds += expected_seconds(model_config, job.seq_len,
                                  left * job.batch_size * job.seq_len, strategy,
                                  tc.objective) or 0.0
  duration = f"~{_clock(seconds)} expected" if seconds else "duration unknown"
  print(f"a3-train: preset {job.init_from or job.preset}, {params / 1e6:.2f}M parameters, "
        f"{job.steps - start} steps of {job.batch_size}x{job.seq_len} tokens ({tokens:,}) on "
        f"{jax.device_count()} {jax.default_backend()} device(s), {duration}; "
        f"workdir {job.workdir}", flush=True)
