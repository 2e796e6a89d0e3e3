"""A3 adapted from a causal LM vs masked diffusion adapted the DiffuLLaMA way, vs the
compute-matched causal control, on the embedded plays (CPU). See README.md.

One command, resumable (each stage is skipped when its export / result exists; a
stage cut short resumes from its own checkpoint):
  python experiments/adaptation/run.py --workdir=runs/adaptation [--budget=full|smoke]
      [--seeds=2] [--eval_text=FILE ...]

Stages: (1) base: a causal LM on the training plays; (2) for each seed, four
adaptations of that base with equal tokens: a3 (the paper's curriculum), a3_direct
(permuted groups only), mdm (shift kept, attention annealed causal -> full, MDLM
loss), ar (the causal control); (3) every model evaluated on the same validation
items; (4) WORKDIR/results.json (flat keys, mean and std over seeds, plus details)
and WORKDIR/results.md (tables). The last line printed is one JSON object.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from a3_jax.checkpoint import restore_params
from a3_jax.config import ModelConfig
from a3_jax.data.corpus import asset_path, load_works
from a3_jax.export import is_export, load_export, save_export
from a3_jax.metrics import read_metrics
from a3_jax.tokenizer import load_tokenizer
from a3_jax.train.config import Job, TrainConfig
from a3_jax.train.loop import run as train_run

import evaluation
import report
from settings import A3_DIRECT_STAGES, A3_STAGES, BUDGETS, curriculum

_WORKDIR = flags.DEFINE_string("workdir", "runs/adaptation", "experiment directory")
_BUDGET = flags.DEFINE_enum("budget", "full", list(BUDGETS), "full: ~2 h on a quiet 2-core "
                            "CPU; smoke: every stage end to end in minutes (not results)")
_SEEDS = flags.DEFINE_integer("seeds", 2, "seeds of the adaptation stage")
_EVAL_TEXT = flags.DEFINE_multi_string("eval_text", [], "plain-text file added to the "
                                       "likelihood and infilling evaluation (repeatable)")

ADAPTATIONS = ("a3", "a3_direct", "mdm", "ar")
KIND = {"base": "ar", "a3": "a3", "a3_direct": "a3", "mdm": "mdm", "ar": "ar"}


def tokenizer_path() -> str:
  return str(asset_path("shakespeare.model"))


def job_for(name: str, seed: int, budget) -> Job:
  """The a3-train job of a stage (base, or an adaptation of the base)."""
  root = _WORKDIR.value
  if name == "base":
    steps = budget.base_steps
    return Job(workdir=os.path.join(root, "runs", "base"), preset="small",
               model_overrides=budget.model, tokenizer=tokenizer_path(), steps=steps,
               batch_size=budget.batch_size, seq_len=budget.seq_len, curriculum=f"ar:{steps}",
               seed=0, eval_every=max(1, steps // 4), save_every=max(1, min(100, steps)),
               eval_batches=4, mesh="data:1",
               train=TrainConfig(lr=budget.base_lr, warmup_steps=max(1, steps // 10),
                                 total_steps=steps, objective="ar"))
  steps = budget.adapt_steps
  stages = {"a3": curriculum(A3_STAGES, steps), "a3_direct": curriculum(A3_DIRECT_STAGES, steps)}
  mdm = name == "mdm"
  return Job(workdir=os.path.join(root, "runs", f"{name}_s{seed}"),
             init_from=export_dir("base", 0), steps=steps, batch_size=budget.batch_size,
             seq_len=budget.seq_len, curriculum=stages.get(name, f"ar:{steps}"), seed=seed,
             eval_every=max(1, steps // 2), save_every=max(1, min(100, steps)), eval_batches=4,
             mesh="data:1",
             train=TrainConfig(lr=budget.adapt_lr, warmup_steps=max(1, steps // 10),
                               total_steps=steps, schedule="linear",
                               objective={"a3_direct": "a3"}.get(name, name),
                               mdm_shift=mdm, mdm_anneal_steps=(
                                   round(budget.mdm_anneal_fraction * steps) if mdm else 0)))


def model_name(name: str, seed: int) -> str:
  return "base" if name == "base" else f"{name}_s{seed}"


def export_dir(name: str, seed: int) -> str:
  return os.path.join(_WORKDIR.value, "exports", model_name(name, seed))


def train_stage(name: str, seed: int, budget) -> dict:
  """Trains (or resumes) a stage unless its export exists; returns its summary."""
  out = export_dir(name, seed)
  summary_path = os.path.join(out, "training.json")
  if is_export(out):
    print(f"[skip] {model_name(name, seed)}: export exists", flush=True)
    with open(summary_path) as f:
      return json.load(f)
  job = job_for(name, seed, budget)
  print(f"[train] {model_name(name, seed)}: {job.curriculum} ({job.train.objective})",
        flush=True)
  train_run(job)
  params, meta, step = restore_params(job.workdir)
  if step != job.steps:  # stopped early (SIGTERM saves and returns): never export it
    raise SystemExit(f"{model_name(name, seed)} stopped at step {step} of {job.steps}; "
                     "run again to resume it")
  config = ModelConfig.from_dict(meta["model_config"])
  records = read_metrics(job.workdir)
  train = [r for r in records if "split" not in r]
  valid = [r for r in records if r.get("split") == "validation"]
  summary = {"curriculum": job.curriculum, "objective": job.train.objective,
             "steps": job.steps, "tokens": job.steps * job.batch_size * job.seq_len,
             "lr": job.train.lr, "mdm_shift": job.train.mdm_shift,
             "mdm_anneal_steps": job.train.mdm_anneal_steps,
             "final_train_loss": float(np.mean([r["loss"] for r in train[-10:]])),
             "train_wall_s": float(sum(job.batch_size * job.seq_len / r["tokens_per_s"]
                                       for r in train)),
             "validation": valid[-1] if valid else {}}
  save_export(out, params, config, tokenizer_path())
  with open(summary_path, "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def evaluate_model(name: str, seed: int, items, budget) -> dict:
  """Every measurement of one model (cached in WORKDIR/eval/<model>.json)."""
  path = os.path.join(_WORKDIR.value, "eval", model_name(name, seed) + ".json")
  if os.path.isfile(path):
    print(f"[skip] eval of {model_name(name, seed)}", flush=True)
    with open(path) as f:
      return json.load(f)
  kind = KIND[name]
  params, config, _ = load_export(export_dir(name, seed))
  start = time.perf_counter()
  out = {"kind": kind,
         "likelihood": evaluation.likelihood(kind, params, config, items, budget,
                                             budget.seq_len),
         "infilling": evaluation.infilling(kind, params, config, items),
         "multiple_choice": evaluation.multiple_choice_tasks(kind, params, config, items,
                                                             budget)}
  if kind in ("a3", "mdm"):
    judge = load_export(export_dir("ar", seed))[:2]
    out["generation"] = evaluation.generation(kind, params, config, items, budget, judge)
  out["eval_wall_s"] = time.perf_counter() - start
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  print(f"[eval] {model_name(name, seed)}: {out['eval_wall_s']:.0f} s", flush=True)
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO
  budget = BUDGETS[_BUDGET.value]
  started = time.perf_counter()
  seeds = list(range(_SEEDS.value))
  training = {"base": train_stage("base", 0, budget)}
  for seed in seeds:
    for name in ADAPTATIONS:
      training[model_name(name, seed)] = train_stage(name, seed, budget)
  tokenizer = load_tokenizer(tokenizer_path())
  extra = {}
  for path in _EVAL_TEXT.value:
    with open(path, encoding="utf-8") as f:
      extra[os.path.basename(path)] = f.read()
  items = evaluation.Items(tokenizer, dict(load_works("validation")), extra, budget)
  evals = {"base": evaluate_model("base", 0, items, budget)}
  for seed in seeds:
    for name in ADAPTATIONS:
      evals[model_name(name, seed)] = evaluate_model(name, seed, items, budget)
  with open(tokenizer_path(), "rb") as f:
    tok_sha = hashlib.sha256(f.read()).hexdigest()[:16]
  params = load_export(export_dir("base", 0))[0]
  settings = {"budget": _BUDGET.value, **{k: v for k, v in vars(budget).items()},
              "seeds": seeds, "a3_curriculum": training[model_name("a3", 0)]["curriculum"],
              "a3_direct_curriculum": training[model_name("a3_direct", 0)]["curriculum"],
              "tokenizer_sha256_16": tok_sha, "vocab_size": tokenizer.vocab_size,
              "params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
              "eval_text": list(extra), "items": items.counts(),
              "this_invocation_wall_s": time.perf_counter() - started}
  results = report.aggregate(settings, training, evals, seeds)
  with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  text = report.tables(results)
  with open(os.path.join(_WORKDIR.value, "results.md"), "w") as f:
    f.write(text + "\n")
  print(text)
  print(json.dumps({k: v for k, v in results.items() if isinstance(v, float)}))


if __name__ == "__main__":
  app.run(main)
