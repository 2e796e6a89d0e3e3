"""What a training run prints: the banner, progress and validation lines, warnings, and
the closing hints."""

from __future__ import annotations

import sys

import jax

from a3_jax.config import ModelConfig
from a3_jax.export import RUN_FLAGS
from a3_jax.progress import clock
from a3_jax.train.config import Job


def warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def trained_heads(job: Job, steps: int | None = None) -> tuple[str, str | None]:
  """(the head a3-generate should read after `steps` (default --steps) of this run,
  why not the query head, or None)."""
  from a3_jax.history import causal_steps
  steps = job.steps if steps is None else steps
  if job.train.objective != "a3":
    return "content", f"--objective={job.train.objective} trains no query stream"
  causal = causal_steps(job.curriculum)
  if steps <= causal:
    return "content", (f"--steps={steps} ends inside the 'causal' stage (A3 training "
                       f"starts after step {causal}): the query stream A3 decodes with is "
                       "not trained")
  return "query", None


def banner(job: Job, model_config: ModelConfig, params, start: int, expected: float | None,
           validations: int, validation_s: float) -> None:
  """The run's first lines: preset, size, workdir, the expected duration and its parts,
  and a note when the run trains no query stream."""
  if jax.process_index():
    return
  count = sum(x.size for x in jax.tree.leaves(params))
  tokens = (job.steps - start) * job.batch_size * job.seq_len
  duration = (f"~{clock(expected)} expected ({validations} validation(s) at ~{clock(validation_s)}"
              " and compilation as measured at start-up, steps by the FLOPs model; updated "
              "from the steps' times as they run)"
              if expected is not None else "duration unknown until the first steps")
  print(f"a3-train: preset {job.init_from or job.preset}, {count / 1e6:.2f}M parameters, "
        f"{job.steps - start} steps of {job.batch_size}x{job.seq_len} tokens ({tokens:,}) on "
        f"{jax.device_count()} {jax.default_backend()} device(s), curriculum {job.curriculum}, "
        f"lr {job.train.lr:g}; {duration}; workdir {job.workdir}", flush=True)
  _, why = trained_heads(job)
  if why:
    print(f"note: {why}; sample it with a3-generate --head=content", flush=True)


def schedule_note(job: Job, tc) -> str:
  """What resuming with another --steps does to the learning-rate schedule."""
  from a3_jax.train.state import learning_rate_schedule
  final = float(learning_rate_schedule(tc)(tc.total_steps))
  return (f"this run's learning-rate schedule was laid out for {tc.total_steps} steps and "
          f"continues as it was, not restarted: with --steps={job.steps}, steps past "
          f"{tc.total_steps} train at its final rate {final:.2e} (a new schedule: a3-export "
          "this run and start a fresh --workdir with --init_from=EXPORT)")


def progress(job: Job, record: dict, elapsed: float, eta: float | None,
             compiled: float | None = None) -> None:
  """One step's line (the loop prints every 10th and the first)."""
  kernel = (f" kernel rows {record['kernel_rows']:.0f}/"
            f"{record['kernel_rows'] + record['fallback_rows']:.0f}"
            if "kernel_rows" in record else "")
  first = f" (compiling ~{clock(compiled)})" if compiled is not None else ""
  left = "?" if eta is None else clock(eta)
  print(f"step {record['step']}/{job.steps} [{record['stage']}] loss {record['loss']:.4f} "
        f"lr {record['lr']:.2e} tok/s {record['tokens_per_s']:.0f}{kernel} "
        f"elapsed {clock(elapsed)}{first} ETA {left}", flush=True)


def validation(step: int, results: dict) -> None:
  print(f"step {step} validation " + " ".join(
      f"{k} {v:.4f}" + ("/char" if k.endswith("_per_char") else "/token")
      for k, v in results.items() if k.startswith("nll")), flush=True)


def mixture(step: int, shares: dict) -> None:
  """The token shares of a --data=mix: so far, beside their weights (this host's rows)."""
  print(f"step {step} data token shares " + ", ".join(
      f"{spec} {s['share']:.3f} (weight {s['weight']:.3f})" for spec, s in shares.items()),
        flush=True)


def done(job: Job, seconds: float, expected: float | None) -> None:
  """The last lines of a finished run: its time against the start's estimate, where its
  results are, and what to run next (with the head the run trained)."""
  out = job.workdir.rstrip("/").split("/")[-1] or "run"
  estimate = "" if expected is None else f" (expected at the start: ~{clock(expected)})"
  head, why = trained_heads(job)
  then = (f"a3-generate --checkpoint=exports/{out} --prompt=\"ROMEO.\" --max_new_tokens=64"
          + (" --head=content" if head == "content" else ""))
  print(f"done in {clock(seconds)}{estimate}. Results: {job.workdir}/metrics.jsonl "
        f"(curves: a3-plot {job.workdir}); flags: {job.workdir}/{RUN_FLAGS}\n"
        f"export: a3-export --workdir={job.workdir} --out=exports/{out}\n"
        f"then:   {then}" + (f"\n        ({why})" if why else ""), flush=True)
