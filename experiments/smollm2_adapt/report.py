"""results.json -> the Markdown tables of results.md, the samples and the headline JSON."""

from __future__ import annotations

import numpy as np

from a3_jax.tasks import infill
from settings import PUBLISHED

BASELINE = ("base", "ar_g1")  # the causal model, prefix only: what A3 must beat


def stage_walls(train_records: list[dict], budget) -> dict:
  """Seconds spent in each curriculum stage (from each step's tokens/s) and in all."""
  walls = {}
  for r in train_records:
    seconds = budget.batch_size * budget.seq_len / r["tokens_per_s"]
    walls[r["stage"]] = walls.get(r["stage"], 0.0) + seconds
  return {**walls, "total": sum(walls.values())}


def rescore(evals: dict, golds: list[str]) -> dict:
  """Each decoder's ROUGE (means and standard errors) recomputed from its predictions,
  with ROUGE-L precision and recall and the words per middle (what ROUGE counts); and
  each one's per-story ROUGE-L difference from the baseline's: mean and standard error
  of the paired differences ({model decoder: {mean, se}})."""
  per_story = {}
  for model, e in evals.items():
    for key, r in e["rocstories"].items():
      golds_r = golds[:len(r["predictions"])]
      r.update(infill.rouge(r["predictions"], golds_r))
      for measure in ("precision", "recall"):
        r[f"rougeL_{measure}"] = float(np.mean(infill.rouge_per_example(
            r["predictions"], golds_r, measure)["rougeL"]))
      r["words"] = float(np.mean([len(infill.rouge_words(p)) for p in r["predictions"]]))
      r["gold_words"] = float(np.mean([len(infill.rouge_words(g)) for g in golds_r]))
      per_story[(model, key)] = infill.rouge_per_example(r["predictions"], golds_r)["rougeL"]
  base = per_story.get(BASELINE)
  if base is None:
    return {}
  return {f"{model} {key}": {"mean": float(np.mean(v - base)),
                             "se": infill.standard_error(v - base)}
          for (model, key), v in per_story.items() if (model, key) != BASELINE}


def samples(stories, evals: dict) -> list[dict]:
  """The first stories' prefix, gold middle, suffix and every model's middle."""
  return [{"prefix": s.prefix, "gold": s.middle, "suffix": s.suffix,
           "middles": {f"{model} {key}": out["predictions"][i]
                       for model, e in evals.items() for key, out in e["rocstories"].items()
                       if i < len(out["predictions"])}}
          for i, s in enumerate(stories)]


def _base_nll(results: dict, text: str) -> float | None:
  base = results["evaluation"]["base"]["likelihood"].get(text)
  return base["results"][0]["nll_per_token"] if base else None


def tables(results: dict) -> str:
  s, nan = results["settings"], float("nan")
  decoders = [(model, key, r) for model, e in results["evaluation"].items()
              for key, r in e["rocstories"].items()]
  gold_words = next((r["gold_words"] for _, _, r in decoders if "gold_words" in r), nan)
  lines = [f"# SmolLM2-135M → A3 / MDM: results ({s['budget']} budget, {s['limit']} stories)",
           "", "## ROCStories infilling (greedy; middle at its gold length)", "",
           "ROUGE: mean ± standard error over the stories; 'ΔL vs base': the mean per-story "
           "ROUGE-L difference from the base (prefix only) ± its paired standard error.", "",
           "ROUGE-L P / R: its precision and recall; words: per middle, as ROUGE counts them "
           f"(punctuation dropped; the gold middles: {gold_words:.1f}).", "",
           "| model | decoder | tokens/call | calls/story | ROUGE-1 | ROUGE-2 | ROUGE-L | "
           "ΔL vs base | ROUGE-L P / R | words | exact | token acc | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  versus = results.get("versus_base", {})
  for model, key, r in decoders:
    method, group = key.rsplit("_g", 1)
    rouges = " | ".join(f"{r[n]:.1f} ± {r.get(n + '_se', nan):.1f}" for n in infill.ROUGE_TYPES)
    d = versus.get(f"{model} {key}")
    delta = f"{d['mean']:+.1f} ± {d['se']:.1f}" if d else "–"
    lines.append(f"| {model} | {method} | {group} | {r['calls_per_story']:.1f} | {rouges} | "
                 f"{delta} | {r.get('rougeL_precision', nan):.1f} / "
                 f"{r.get('rougeL_recall', nan):.1f} | {r.get('words', nan):.1f} | "
                 f"{r['exact_match']:.3f} | {r['token_accuracy']:.3f} | {r['wall_s']:.0f} |")
  for name, (r1, r2, rl), source in PUBLISHED:
    lines.append(f"| {name} ({source}) | published | | | {r1} | {r2} | {rl} | | | | | | |")
  lines += ["", "## Exact likelihood of held-out text (nats per token)", "",
            "| model | text | grouping | NLL/token | vs base causal | tokens | wall s |",
            "|---|---|---|---|---|---|---|"]
  for model, e in results["evaluation"].items():
    for text, out in e["likelihood"].items():
      base = _base_nll(results, text)
      for r in out["results"]:
        rel = f"{100 * (r['nll_per_token'] / base - 1):+.1f} %" if base else "–"
        lines.append(f"| {model} | {text} | {r['grouping']} | {r['nll_per_token']:.4f} | "
                     f"{rel} | {r['tokens']} | {out['wall_s']:.0f} |")
  lines += ["", "## Adaptation (wall s per stage, from each step's tokens/s)", "",
            "| model | tokens | stages: wall s | total wall s |", "|---|---|---|---|"]
  for model, t in results["training"].items():
    walls = t["train_wall_s"]
    stages = ", ".join(f"{k} {v:.0f}" for k, v in walls.items() if k != "total")
    lines.append(f"| {model} | {t['tokens']:,} | {stages} | {walls['total']:.0f} |")
  lines += ["", "## Samples", ""]
  for i, sample in enumerate(results["samples"]):
    lines += [f"**Story {i + 1}.** {sample['prefix']} **[?]** {sample['suffix']}",
              f"- gold: {sample['gold']}"]
    lines += [f"- {name}: {text.strip()!r}" for name, text in sample["middles"].items()]
    lines.append("")
  return "\n".join(lines)


def headline(results: dict) -> dict:
  """Flat numbers: ROUGE-L of each model and decoder, NLL/token of each grouping."""
  out = {}
  for model, e in results["evaluation"].items():
    for key, r in e["rocstories"].items():
      out[f"{model}_{key}_rougeL"] = round(r["rougeL"], 2)
    for text, rep in e["likelihood"].items():
      for r in rep["results"]:
        out[f"{model}_{text}_{r['grouping']}_nll"] = round(r["nll_per_token"], 4)
  return out
