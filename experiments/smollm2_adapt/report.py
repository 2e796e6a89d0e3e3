"""results.json -> the Markdown tables of results.md, the samples and the headline JSON."""

from __future__ import annotations

from settings import PUBLISHED


def stage_walls(train_records: list[dict], budget) -> dict:
  """Seconds spent in each curriculum stage (from each step's tokens/s) and in all."""
  walls = {}
  for r in train_records:
    seconds = budget.batch_size * budget.seq_len / r["tokens_per_s"]
    walls[r["stage"]] = walls.get(r["stage"], 0.0) + seconds
  return {**walls, "total": sum(walls.values())}


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
  s = results["settings"]
  lines = [f"# SmolLM2-135M → A3 / MDM: results ({s['budget']} budget, {s['limit']} stories)",
           "", "## ROCStories infilling (greedy; middle at its gold length)", "",
           "| model | decoder | tokens/call | calls/story | ROUGE-1 | ROUGE-2 | ROUGE-L | "
           "exact | token acc | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
  for model, e in results["evaluation"].items():
    for key, r in e["rocstories"].items():
      method, group = key.rsplit("_g", 1)
      lines.append(f"| {model} | {method} | {group} | {r['calls_per_story']:.1f} | "
                   f"{r['rouge1']:.1f} | {r['rouge2']:.1f} | {r['rougeL']:.1f} | "
                   f"{r['exact_match']:.3f} | {r['token_accuracy']:.3f} | {r['wall_s']:.0f} |")
  for name, (r1, r2, rl), source in PUBLISHED:
    lines.append(f"| {name} ({source}) | published | | | {r1} | {r2} | {rl} | | | |")
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
