"""What a training run prints: the banner, progress and validation lines, warnings, and
the closing hints."""

from __future__ import annotations

import sys

import jax

from a3_jax.config import ModelConfig
from a3_jax.export import RUN_FLAGS
from a3_jax.flops import expected_seconds
from a3_jax.train.config import Job


def warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s"


def banner(job: Job, curriculum, model_config: ModelConfig, params, start: int) -> None:
  """The run's first line: preset, size, workdir, and a rough expected duration."""
  if jax.process_index():
    return
  count = sum(x.size for x in jax.tree.leaves(params))
  tokens = (job.steps - start) * job.batch_size * job.seq_len
  seconds, begin = 0.0, 0  # each remaining stage at its own cost (the last runs on)
  for i, (strategy, steps) in enumerate(curriculum.stages):
    end = job.steps if i == len(curriculum.stages) - 1 else min(job.steps, begin + steps)
    left = max(0, end - max(begin, start))
    if left:
      seconds += expected_seconds(model_config, job.seq_len,
                                  left * job.batch_size * job.seq_len, strategy,
                                  job.train.objective) or 0.0
    begin = end
  duration = f"~{clock(seconds)} expected" if seconds else "duration unknown"
  print(f"a3-train: preset {job.init_from or job.preset}, {count / 1e6:.2f}M parameters, "
        f"{job.steps - start} steps of {job.batch_size}x{job.seq_len} tokens ({tokens:,}) on "
        f"{jax.device_count()} {jax.default_backend()} device(s), {duration}; "
        f"workdir {job.workdir}", flush=True)


def progress(job: Job, record: dict, elapsed: float, steps_done: int) -> None:
  """One step's line (the loop prints every 10th and the first)."""
  kernel = (f" kernel rows {record['kernel_rows']:.0f}/"
            f"{record['kernel_rows'] + record['fallback_rows']:.0f}"
            if "kernel_rows" in record else "")
  eta = elapsed / steps_done * (job.steps - record["step"])
  print(f"step {record['step']}/{job.steps} [{record['stage']}] loss {record['loss']:.4f} "
        f"lr {record['lr']:.2e} tok/s {record['tokens_per_s']:.0f}{kernel} "
        f"elapsed {clock(elapsed)} ETA {clock(eta)}", flush=True)


def validation(step: int, results: dict) -> None:
  print(f"step {step} validation " + " ".join(
      f"{k} {v:.4f}" + ("/char" if k.endswith("_per_char") else "/token")
      for k, v in results.items() if k.startswith("nll")), flush=True)


def mixture(step: int, shares: dict) -> None:
  """The token shares of a --data=mix: so far, beside their weights (this host's rows)."""
  print(f"step {step} data token shares " + ", ".join(
      f"{spec} {s['share']:.3f} (weight {s['weight']:.3f})" for spec, s in shares.items()),
        flush=True)


def done(job: Job, seconds: float) -> None:
  """The last lines of a finished run: where its results are, and what to run next."""
  out = job.workdir.rstrip("/").split("/")[-1] or "run"
  print(f"done in {clock(seconds)}. Results: {job.workdir}/metrics.jsonl "
        f"(curves: a3-plot {job.workdir}); flags: {job.workdir}/{RUN_FLAGS}\n"
        f"export: a3-export --workdir={job.workdir} --out=exports/{out}\n"
        f"then:   a3-generate --checkpoint=exports/{out} --prompt=\"ROMEO.\" "
        f"--max_new_tokens=64", flush=True)
