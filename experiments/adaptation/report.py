"""results.json (flat float keys: mean over seeds, `<key>.std` beside it) and the
Markdown tables of results.md."""

from __future__ import annotations

import math

import numpy as np

FAMILIES = ("a3", "a3_direct", "mdm", "ar")
LIKELIHOOD = {"a3": ("a3_ar", "a3_perm4"), "a3_direct": ("a3_ar", "a3_perm4"),
              "mdm": ("mdm_nelbo",), "ar": ("ar",), "base": ("ar",)}
FLAT_NLL = {("ar", "ar"): "ar", ("a3", "a3_ar"): "a3_ar", ("a3", "a3_perm4"): "a3_perm4",
            ("a3_direct", "a3_ar"): "a3_direct_ar", ("a3_direct", "a3_perm4"): "a3_direct_perm4",
            ("mdm", "mdm_nelbo"): "mdm_nelbo", ("base", "ar"): "base"}
INFILL_METHODS = {"a3": ("a3", "a3-dynamic"), "a3_direct": ("a3", "a3-dynamic"),
                  "mdm": ("mdm",), "ar": ("ar",), "base": ("ar",)}


def _put(out: dict, key: str, values) -> None:
  values = [float(v) for v in values]
  out[key] = float(np.mean(values))
  out[key + ".std"] = float(np.std(values)) if len(values) > 1 else 0.0


def _runs(evals: dict, family: str, seeds) -> list[dict]:
  return [evals["base"]] if family == "base" else [evals[f"{family}_s{s}"] for s in seeds]


def aggregate(settings: dict, training: dict, evals: dict, seeds) -> dict:
  out: dict = {}
  for family in ("base",) + FAMILIES:
    runs = _runs(evals, family, seeds)
    for textset in runs[0]["likelihood"]:
      prefix = "" if textset == "plays" else f"{textset}."
      for q in LIKELIHOOD[family]:
        flat = FLAT_NLL[(family, q)]
        _put(out, f"nll.{prefix}{flat}",
             [r["likelihood"][textset][q]["nll_per_token"] for r in runs])
        _put(out, f"nats_per_char.{prefix}{flat}",
             [r["likelihood"][textset][q]["nats_per_char"] for r in runs])
    for textset in runs[0]["infilling"]:
      prefix = "" if textset == "plays" else f"{textset}."
      best = -1.0
      for method in INFILL_METHODS[family]:
        for metric in ("rouge1", "rouge2", "rougeL", "exact_match", "token_accuracy"):
          _put(out, f"infill_{metric}.{prefix}{family}.{method}",
               [r["infilling"][textset][method][metric] for r in runs])
        best = max(best, out[f"infill_rougeL.{prefix}{family}.{method}"])
      out[f"infill_rougeL.{prefix}{family}"] = best
    for task in ("cloze", "speaker"):
      _put(out, f"mc_acc.{task}.{family}", [r["multiple_choice"][task]["accuracy"] for r in runs])
    _put(out, f"mc_acc.{family}", [r["multiple_choice"]["mean"] for r in runs])
    if "generation" in runs[0]:
      for label in [k for k in runs[0]["generation"] if k != "best"]:
        _put(out, f"genppl.{family}.{label}",
             [r["generation"][label]["perplexity"] for r in runs])
        _put(out, f"gen_entropy.{family}.{label}",
             [r["generation"][label]["entropy"] for r in runs])
      labels = [k for k in runs[0]["generation"] if k != "best"]
      out[f"genppl.{family}"] = min(out[f"genppl.{family}.{lb}"] for lb in labels)
  out["settings"] = settings
  out["training"] = training
  out["evaluations"] = evals
  return out


def _pm(results: dict, key: str, digits: int = 3, scale: float = 1.0) -> str:
  if key not in results:
    return "–"
  v, s = results[key] * scale, results.get(key + ".std", 0.0) * scale
  return f"{v:.{digits}f} ± {s:.{digits}f}" if s else f"{v:.{digits}f}"


def tables(r: dict) -> str:
  st = r["settings"]
  lines = [f"Budget `{st['budget']}`, {st['params']:,} parameters, seeds {st['seeds']}; "
           "mean ± std over adaptation seeds.", "",
           "| model | quantity | nats/token | nats/char |", "|---|---|---|---|"]
  names = {"base": ("base (causal)", "causal NLL"), "ar": ("AR control", "causal NLL"),
           "a3_ar": ("A3 curriculum", "exact NLL, `ar`"),
           "a3_perm4": ("A3 curriculum", "exact NLL, `perm:4`"),
           "a3_direct_ar": ("A3 permuted-only", "exact NLL, `ar`"),
           "a3_direct_perm4": ("A3 permuted-only", "exact NLL, `perm:4`"),
           "mdm_nelbo": ("MDM (DiffuLLaMA-style)", "NELBO (bound)")}
  for flat, (model, quantity) in names.items():
    lines.append(f"| {model} | {quantity} | {_pm(r, f'nll.{flat}', 4)} | "
                 f"{_pm(r, f'nats_per_char.{flat}', 4)} |")
  lines += ["", "| model | multiple choice: play cloze | speaker | mean |", "|---|---|---|---|"]
  for fam in ("base",) + FAMILIES:
    lines.append(f"| {fam} | {_pm(r, f'mc_acc.cloze.{fam}')} | {_pm(r, f'mc_acc.speaker.{fam}')} "
                 f"| {_pm(r, f'mc_acc.{fam}')} |")
  lines += ["", "| model | infilling decoder | ROUGE-1 | ROUGE-2 | ROUGE-L | exact match | "
            "token acc. |", "|---|---|---|---|---|---|---|"]
  for fam in ("base",) + FAMILIES:
    for method in INFILL_METHODS[fam]:
      k = f"{fam}.{method}"
      lines.append(f"| {fam} | {method} | {_pm(r, f'infill_rouge1.{k}', 1)} | "
                   f"{_pm(r, f'infill_rouge2.{k}', 1)} | {_pm(r, f'infill_rougeL.{k}', 1)} | "
                   f"{_pm(r, f'infill_exact_match.{k}')} | "
                   f"{_pm(r, f'infill_token_accuracy.{k}')} |")
  lines += ["", f"| model | generation ({st['gen_calls']} calls for {st['gen_new_tokens']} "
            "tokens) | perplexity (AR control judge) | unigram entropy |", "|---|---|---|---|"]
  for fam in ("a3", "a3_direct", "mdm"):
    for key in sorted(k for k in r if k.startswith(f"genppl.{fam}.") and not k.endswith(".std")):
      label = key.split(".")[-1]
      lines.append(f"| {fam} | {label} | {_pm(r, key, 1)} | "
                   f"{_pm(r, f'gen_entropy.{fam}.{label}', 3)} |")
  extra = sorted({k.split(".")[1] for k in r if k.startswith("nll.text:")})
  for name in extra:
    lines += ["", f"`--eval_text` {name}: | model | nats/token | nats/char | infill ROUGE-L |",
              "|---|---|---|---|"]
    for flat in names:
      fam = flat.split("_")[0] if flat not in ("a3_direct_ar", "a3_direct_perm4") else "a3_direct"
      lines.append(f"| {flat} | {_pm(r, f'nll.{name}.{flat}', 4)} | "
                   f"{_pm(r, f'nats_per_char.{name}.{flat}', 4)} | "
                   f"{_pm(r, f'infill_rougeL.{name}.{fam}', 1)} |")
  lines += ["", "| stage | curriculum / objective | tokens | final train loss | train wall s |",
            "|---|---|---|---|---|"]
  for name, t in r["training"].items():
    lines.append(f"| {name} | `{t['curriculum']}` ({t['objective']}"
                 f"{', shift, anneal ' + str(t['mdm_anneal_steps']) if t['mdm_shift'] else ''}) "
                 f"| {t['tokens']:,} | {t['final_train_loss']:.4f} | {t['train_wall_s']:.0f} |")
  walls = {k: v["eval_wall_s"] for k, v in r["evaluations"].items()}
  lines += ["", "Evaluation wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())]
  if not all(math.isfinite(v) for v in walls.values()):
    lines.append("(some evaluation timings are missing)")
  return "\n".join(lines)
