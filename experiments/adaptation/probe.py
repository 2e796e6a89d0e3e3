"""One variant of an adaptation, to find out why a target was missed (README.md, "Probes").

Trains one more adaptation of an experiment's base (WORKDIR/exports/base, made by
run.py) with the same budget except what the flags change (steps, learning rate,
curriculum), then scores it on the same validation items as run.py: likelihood
(causal NLL, or A3 exact NLL under `ar` and `perm:4`) and, with --mc, multiple choice.
Appends one JSON line to WORKDIR/probes.jsonl and prints it. Resumable like run.py
(the probe's run directory is WORKDIR/probes/NAME).

  python experiments/adaptation/probe.py --workdir=runs/adaptation --probe=a3 \\
      --probe_steps=960 --name=a3_x3
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags, logging

from a3_jax.checkpoint import restore_params
from a3_jax.config import ModelConfig
from a3_jax.data.corpus import load_works
from a3_jax.export import is_export
from a3_jax.metrics import read_metrics
from a3_jax.tokenizer import load_tokenizer
from a3_jax.train.loop import run as train_run

import evaluation
import run as experiment
from settings import A3_DIRECT_STAGES, A3_STAGES, BUDGETS, curriculum

_PROBE = flags.DEFINE_enum("probe", "a3", ["a3", "a3_direct", "ar"], "which adaptation to vary")
_NAME = flags.DEFINE_string("name", None, "the probe's name (its directory under probes/)")
_STEPS = flags.DEFINE_integer("probe_steps", None, "adaptation steps (default: the budget's)")
_LR = flags.DEFINE_float("probe_lr", None, "adaptation peak lr (default: the budget's)")
_CURRICULUM = flags.DEFINE_string("probe_curriculum", None, "an a3-train curriculum "
                                  "(default: the adaptation's own, scaled to the steps)")
_SEED = flags.DEFINE_integer("probe_seed", 0, "adaptation seed")
_MC = flags.DEFINE_bool("mc", False, "also the multiple-choice tasks")


def probe_job(budget):
  """run.job_for's job of the chosen adaptation, with the flags' changes."""
  job = experiment.job_for(_PROBE.value, _SEED.value, budget)
  steps = _STEPS.value or budget.adapt_steps
  stages = {"a3": A3_STAGES, "a3_direct": A3_DIRECT_STAGES}.get(_PROBE.value)
  default = curriculum(stages, steps) if stages else f"ar:{steps}"
  train = dataclasses.replace(job.train, lr=_LR.value or job.train.lr, total_steps=steps,
                              warmup_steps=max(1, steps // 10))
  workdir = os.path.join(experiment._WORKDIR.value, "probes", _NAME.value)
  return dataclasses.replace(
      job, workdir=workdir, steps=steps,
      curriculum=_CURRICULUM.value or default, eval_every=max(1, steps // 4), train=train)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not _NAME.value:
    raise app.UsageError("--name is required")
  budget = BUDGETS[experiment._BUDGET.value]
  if not is_export(experiment.export_dir("base", 0)):
    raise app.UsageError(f"no base export under {experiment._WORKDIR.value}: run run.py first")
  job = probe_job(budget)
  print(f"[probe] {_NAME.value}: {_PROBE.value} {job.curriculum} lr {job.train.lr}", flush=True)
  start = time.perf_counter()
  train_run(job)
  train_wall = time.perf_counter() - start
  params, meta, step = restore_params(job.workdir)
  if step != job.steps:
    raise SystemExit(f"probe stopped at step {step} of {job.steps}; run again to resume it")
  config = ModelConfig.from_dict(meta["model_config"])
  tokenizer = load_tokenizer(experiment.tokenizer_path())
  items = evaluation.Items(tokenizer, dict(load_works("validation")), {}, budget)
  kind = experiment.KIND[_PROBE.value]
  out = {"name": _NAME.value, "probe": _PROBE.value, "curriculum": job.curriculum,
         "steps": job.steps, "lr": job.train.lr, "seed": _SEED.value,
         "tokens": job.steps * job.batch_size * job.seq_len, "train_wall_s": train_wall,
         "validation_curve": [r for r in read_metrics(job.workdir)
                              if r.get("split") == "validation"],
         "likelihood": evaluation.likelihood(kind, params, config, items, budget,
                                             budget.seq_len)["plays"]}
  if _MC.value:
    out["multiple_choice"] = evaluation.multiple_choice_tasks(kind, params, config, items,
                                                              budget)
  with open(os.path.join(experiment._WORKDIR.value, "probes.jsonl"), "a") as f:
    f.write(json.dumps(out) + "\n")
  print(json.dumps({k: v for k, v in out.items() if k != "validation_curve"}))


if __name__ == "__main__":
  app.run(main)
