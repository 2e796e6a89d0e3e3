"""A3 vs the causal (AR) and masked-diffusion (MDM) baselines, trained alike (CPU).

One command:
  python experiments/small_scale/run.py [--workdir=runs/small_scale] [--steps=200]

1. Trains the same backbone (preset, data, tokenizer, batch, steps, optimizer)
   three times with a3-train's loop: --objective=a3 (the default curriculum,
   scaled to --steps), ar and mdm. A finished run is reused, not retrained.
2. Likelihood on the same validation tokens (the embedded corpus' validation
   plays, the first --eval_tokens of each): AR NLL (content head); A3 exact NLL
   under `ar` and `perm:4` (4 orders); the MDM NELBO (an upper bound on its NLL,
   --elbo_samples samples). Windows of --seq_len with a quarter of context.
3. Infilling: --infill_rows validation windows of 64 tokens with 16 blanks in
   the middle; exact-match accuracy of the blanked tokens, greedy, at equal
   numbers of model calls (16, 8, 4): A3 group decoding (left to right, groups
   of 16/calls), A3 dynamic decoding (most confident first) and MDM
   (confidence-ordered unmasking); the AR baseline fills left to right from the
   prefix alone (16 calls). Blank tokens filled per second (CPU, batch of all rows).
Writes WORKDIR/results.json and WORKDIR/results.md; the last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from a3_jax import evaluate, mdm
from a3_jax.checkpoint import restore_params
from a3_jax.config import ModelConfig
from a3_jax.data.corpus import load_works
from a3_jax.tokenizer import load_tokenizer
from a3_jax.metrics import read_metrics
from a3_jax.tasks import fill
from a3_jax.train.config import Job, TrainConfig
from a3_jax.train.loop import run

_WORKDIR = flags.DEFINE_string("workdir", "runs/small_scale", "run directory")
_PRESET = flags.DEFINE_string("preset", "small", "model preset of all three runs")
_STEPS = flags.DEFINE_integer("steps", 200, "training steps of each objective")
_BATCH = flags.DEFINE_integer("batch_size", 8, "rows per step")
_SEQ = flags.DEFINE_integer("seq_len", 128, "tokens per row")
_LR = flags.DEFINE_float("lr", 1e-3, "peak learning rate")
_EVAL_TOKENS = flags.DEFINE_integer("eval_tokens", 1024, "validation tokens per play")
_ELBO_SAMPLES = flags.DEFINE_integer("elbo_samples", 16, "samples of the MDM NELBO")
_INFILL_ROWS = flags.DEFINE_integer("infill_rows", 48, "validation windows to infill")
_SEED = flags.DEFINE_integer("seed", 0, "seed of init, data and evaluation")

OBJECTIVES = ("a3", "ar", "mdm")
# The a3-train default curriculum, as fractions of the steps.
A3_STAGES = (("ar", 0.2), ("block:2", 0.16), ("block:4", 0.16), ("perm:4", 0.48))
SPAN, WIDTH, CALLS = (24, 40), 64, (16, 8, 4)


def a3_curriculum(steps: int) -> str:
  counts = [max(1, round(f * steps)) for _, f in A3_STAGES[:-1]]
  counts.append(max(1, steps - sum(counts)))
  return ",".join(f"{name}:{n}" for (name, _), n in zip(A3_STAGES, counts))


def train(objective: str) -> tuple[dict, ModelConfig, dict]:
  """(params, config, training summary) of one objective's run."""
  workdir = os.path.join(_WORKDIR.value, objective)
  steps = _STEPS.value
  job = Job(workdir=workdir, preset=_PRESET.value, steps=steps, batch_size=_BATCH.value,
            seq_len=_SEQ.value, seed=_SEED.value, eval_every=steps, save_every=steps,
            curriculum=a3_curriculum(steps) if objective == "a3" else f"ar:{steps}",
            train=TrainConfig(lr=_LR.value, warmup_steps=max(1, steps // 10),
                              total_steps=steps, objective=objective))
  start = time.perf_counter()
  run(job)
  params, meta, _ = restore_params(workdir)
  records = [r for r in read_metrics(workdir) if "split" not in r]
  summary = {"curriculum": job.curriculum, "steps": steps,
             "final_train_loss": float(np.mean([r["loss"] for r in records[-10:]])),
             "train_tokens_per_s": float(np.median([r["tokens_per_s"] for r in records[1:]]
                                                   or [0.0])),
             "wall_s": time.perf_counter() - start}
  return params, ModelConfig.from_dict(meta["model_config"]), summary


def validation_texts(tokenizer) -> list[np.ndarray]:
  return [np.asarray(tokenizer.encode(text)[:_EVAL_TOKENS.value], np.int32)
          for _, text in load_works("validation")]


def likelihoods(models: dict, texts) -> dict:
  window = _SEQ.value
  common = dict(window=window, context=window // 4, seed=_SEED.value)
  out = {}
  params, config = models["ar"]
  out["ar_nll"] = evaluate.score_texts(params, config, texts, "ar", head="content",
                                       **common).to_dict()
  params, config = models["a3"]
  out["a3_nll_ar"] = evaluate.score_texts(params, config, texts, "ar", **common).to_dict()
  out["a3_nll_perm4"] = evaluate.score_texts(params, config, texts, "perm:4", orders=4,
                                             **common).to_dict()
  params, config = models["mdm"]
  out["mdm_nelbo"] = mdm.nelbo_texts(params, config, texts, num_samples=_ELBO_SAMPLES.value,
                                     **common)
  return out


def infill_rows(texts) -> tuple[np.ndarray, np.ndarray]:
  """Validation windows [R, 64] (evenly spaced over the plays) and the known mask."""
  starts = [(i, s) for i, t in enumerate(texts) for s in range(0, len(t) - WIDTH, WIDTH)]
  picks = np.linspace(0, len(starts) - 1, min(_INFILL_ROWS.value, len(starts))).astype(int)
  rows = np.stack([texts[i][s:s + WIDTH] for i, s in (starts[p] for p in picks)])
  known = np.ones(rows.shape, bool)
  known[:, SPAN[0]:SPAN[1]] = False
  return rows, known


def infilling(models: dict, texts) -> list[dict]:
  rows, known = infill_rows(texts)
  blanks = int((~known).sum())
  runs = [("a3", "a3", c) for c in CALLS] + [("a3", "a3-dynamic", c) for c in CALLS]
  runs += [("mdm", "mdm", c) for c in CALLS] + [("ar", "ar", SPAN[1] - SPAN[0])]
  out = []
  for model, method, calls in runs:
    params, config = models[model]
    k = (SPAN[1] - SPAN[0]) // calls
    given = np.where(known, rows, 0)
    fill.fill(params, config, given, known, method=method, group_size=k)  # compile
    start = time.perf_counter()
    filled, used = fill.fill(params, config, given, known, method=method, group_size=k)
    seconds = time.perf_counter() - start
    hits = int(np.sum((filled == rows) & ~known))
    out.append({"model": model, "method": method, "model_calls": used,
                "tokens_per_call": k, "exact_match": hits / blanks,
                "blank_tokens_per_s": blanks / seconds, "rows": len(rows)})
  return out


def table(results: dict) -> str:
  lk = results["likelihood"]
  lines = ["| model | quantity | nats/token | tokens |", "|---|---|---|---|",
           f"| AR | NLL (causal) | {lk['ar_nll']['nll_per_token']:.4f} | {lk['ar_nll']['tokens']} |",
           f"| A3 | exact NLL, `ar` | {lk['a3_nll_ar']['nll_per_token']:.4f} | "
           f"{lk['a3_nll_ar']['tokens']} |",
           f"| A3 | exact NLL, `perm:4` (4 orders, ± std) | "
           f"{lk['a3_nll_perm4']['nll_per_token']:.4f} ± {lk['a3_nll_perm4']['order_std']:.4f} | "
           f"{lk['a3_nll_perm4']['tokens']} |",
           f"| MDM | NELBO (bound on NLL, ± s.e.) | {lk['mdm_nelbo']['nelbo_per_token']:.4f} ± "
           f"{lk['mdm_nelbo']['stderr_per_token']:.4f} | {lk['mdm_nelbo']['tokens']} |",
           "", "| model | decoding | model calls | tokens/call | exact match | blank tokens/s |",
           "|---|---|---|---|---|---|"]
  for r in results["infilling"]:
    lines.append(f"| {r['model']} | {r['method']} | {r['model_calls']} | {r['tokens_per_call']} "
                 f"| {r['exact_match']:.3f} | {r['blank_tokens_per_s']:.0f} |")
  lines += ["", "| objective | final train loss | train tokens/s | wall s |", "|---|---|---|---|"]
  for name, s in results["training"].items():
    lines.append(f"| {name} | {s['final_train_loss']:.4f} | {s['train_tokens_per_s']:.0f} | "
                 f"{s['wall_s']:.0f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO
  models, training = {}, {}
  for objective in OBJECTIVES:
    params, config, training[objective] = train(objective)
    models[objective] = (params, config)
  texts = validation_texts(load_tokenizer())
  results = {"settings": {"preset": _PRESET.value, "steps": _STEPS.value,
                          "batch_size": _BATCH.value, "seq_len": _SEQ.value, "lr": _LR.value,
                          "eval_tokens_per_play": _EVAL_TOKENS.value, "seed": _SEED.value,
                          "params": int(sum(np.size(x) for x in jax.tree.leaves(models["a3"][0])))},
             "training": training, "likelihood": likelihoods(models, texts),
             "infilling": infilling(models, texts)}
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  text = table(results)
  with open(os.path.join(_WORKDIR.value, "results.md"), "w") as f:
    f.write(text + "\n")
  print(text)
  print(json.dumps({"likelihood": {k: v.get("nll_per_token", v.get("nelbo_per_token"))
                                   for k, v in results["likelihood"].items()},
                    "infilling": [(r["method"], r["model_calls"], round(r["exact_match"], 4))
                                  for r in results["infilling"]]}))


if __name__ == "__main__":
  app.run(main)
