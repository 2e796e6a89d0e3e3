"""Short probes that size the experiment (README.md, "Probes"): one line each appended to
WORKDIR/probes.jsonl and printed.

  train   a3-train from the converted base for --steps steps of --batch_size x --seq_len
          with --objective (a3 under --curriculum, ar = causal, mdm): the median wall
          seconds of a step after the first (which compiles) and the CPU seconds the
          process used per step (from /proc), with the load average around it
  decode  the ROCStories decoders of run.py on --stories stories: wall and process CPU
          seconds per story of a second pass (the first compiles)

On a shared machine the wall times are inflated; CPU seconds / 2 cores estimates the
wall time of a quiet 2-core machine (XLA's CPU backend runs one op on both cores).

  python experiments/smollm2_adapt/probe.py --what=train --objective=a3 --steps=4
  python experiments/smollm2_adapt/probe.py --what=decode --rocstories=PATH --stories=16
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

import run as experiment
from settings import DECODERS, HEADS

_WHAT = flags.DEFINE_enum("what", "train", ["train", "decode"], "what to time")
_OBJECTIVE = flags.DEFINE_enum("objective", "a3", ["a3", "ar", "mdm"], "train: the objective")
_CURRICULUM = flags.DEFINE_string("curriculum", "perm:4:100", "train: a3's curriculum")
_STEPS = flags.DEFINE_integer("steps", 4, "train: steps (the first compiles)")
_BATCH = flags.DEFINE_integer("batch_size", 8, "train: rows per step")
_SEQ = flags.DEFINE_integer("seq_len", 128, "train: tokens per row")
_LR = flags.DEFINE_float("lr", 1e-4, "train: peak learning rate")
_STORIES = flags.DEFINE_integer("stories", 16, "decode: stories timed (one batch)")


def _cpu_seconds(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def probe_train() -> dict:
  name = f"{_OBJECTIVE.value}_{_BATCH.value}x{_SEQ.value}_lr{_LR.value:g}"
  workdir = experiment.path("probes", f"{name}_{int(time.time())}")
  metrics = os.path.join(workdir, "metrics.jsonl")
  argv = [sys.executable, "-m", "a3_jax.cli.train", f"--workdir={workdir}",
          f"--init_from={experiment.convert_base()}", f"--steps={_STEPS.value}",
          f"--batch_size={_BATCH.value}", f"--seq_len={_SEQ.value}", f"--lr={_LR.value}",
          "--warmup_steps=1", "--schedule=constant", "--mesh=data:1", "--nocount_first_group",
          f"--eval_every={10**6}", f"--save_every={10**6}", f"--objective={_OBJECTIVE.value}",
          f"--curriculum={_CURRICULUM.value if _OBJECTIVE.value == 'a3' else 'ar:100'}"]
  if _OBJECTIVE.value == "mdm":
    argv.append("--mdm_shift")
  load = os.getloadavg()[0]
  proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
  cpu_at_step, seen = {}, 0
  while proc.poll() is None:
    time.sleep(0.5)
    if os.path.isfile(metrics):
      with open(metrics) as f:
        records = [json.loads(line) for line in f if '"split"' not in line]
      if len(records) > seen:
        seen = len(records)
        cpu_at_step[records[-1]["step"]] = _cpu_seconds(proc.pid)
  if proc.returncode:
    raise SystemExit(f"a3-train failed (exit {proc.returncode})")
  with open(metrics) as f:
    records = [json.loads(line) for line in f if '"split"' not in line]
  tokens = _BATCH.value * _SEQ.value
  walls = [tokens / r["tokens_per_s"] for r in records[1:]]
  steps = sorted(cpu_at_step)
  cpu = [(cpu_at_step[b] - cpu_at_step[a]) / (b - a) for a, b in zip(steps, steps[1:])]
  return {"probe": "train", "name": name, "objective": _OBJECTIVE.value,
          "curriculum": _CURRICULUM.value, "batch_size": _BATCH.value, "seq_len": _SEQ.value,
          "lr": _LR.value, "losses": [r["loss"] for r in records],
          "step_wall_s_median": statistics.median(walls) if walls else None,
          "step_cpu_s_median": statistics.median(cpu) if cpu else None,
          "quiet_step_s_estimate": statistics.median(cpu) / 2 if cpu else None,
          "loadavg_1min_before": load, "loadavg_1min_after": os.getloadavg()[0]}


def probe_decode() -> dict:
  from a3_jax.convert.loader import load_model
  from a3_jax.tasks.run import run_task
  params, config, tokenizer = load_model(experiment.convert_base())
  out = {"probe": "decode", "stories": _STORIES.value, "loadavg_1min_before": os.getloadavg()[0]}
  for method, group in sorted({d for ds in DECODERS.values() for d in ds} - {("mdm", 2)}):
    head = HEADS["base" if method == "ar" else "mdm" if method == "mdm" else "a3"]
    times = []
    for _ in range(2):  # the first pass compiles
      wall, cpu = time.perf_counter(), time.process_time()
      run_task("rocstories", experiment._ROCSTORIES.value, params, config, tokenizer,
               head=head, method=method, limit=_STORIES.value, batch_size=_STORIES.value,
               group_size=group)
      times.append((time.perf_counter() - wall, time.process_time() - cpu))
    out[f"{method}_g{group}"] = {"first_wall_s": times[0][0],
                                 "wall_s_per_story": times[1][0] / _STORIES.value,
                                 "cpu_s_per_story": times[1][1] / _STORIES.value}
  out["loadavg_1min_after"] = os.getloadavg()[0]
  return out


def main(argv):
  del argv
  os.makedirs(experiment.path(), exist_ok=True)
  out = probe_train() if _WHAT.value == "train" else probe_decode()
  with open(experiment.path("probes.jsonl"), "a") as f:
    f.write(json.dumps(out) + "\n")
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
