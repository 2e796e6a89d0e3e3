"""Every measurement of one model, on items shared by all models (see README.md).

A model is (kind, params, config): kind 'ar' (causal: the base and the control),
'a3' (either A3 adaptation) or 'mdm' (adapted with the DiffuLLaMA shift).
"""

from __future__ import annotations

import numpy as np

from a3_jax import evaluate, mdm
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.tasks import infill, multiple_choice

import continuation  # this experiment's modules (run.py runs from this folder)
import plays

# The sampler of the generation-quality runs (the same for every model).
GEN_SAMPLER = SamplerConfig(temperature=1.0, top_p=0.9)


class Items:
  """Evaluation items built once from the validation plays (and --eval_text files)."""

  def __init__(self, tokenizer, plays_texts: dict[str, str], extra: dict[str, str], budget,
               seed: int = 0):
    b = budget
    self.tokenizer = tokenizer
    self.texts = {name: text for name, text in plays_texts.items()}
    self.extra = extra
    self.likelihood = {}  # name -> (token ids, chars)
    for name, text in {"plays": None, **{f"text:{k}": v for k, v in extra.items()}}.items():
      docs = ([t for t in plays_texts.values()] if text is None else [text])
      ids = [np.asarray(tokenizer.encode(t), np.int32)[:b.eval_tokens_per_play] for t in docs]
      self.likelihood[name] = (ids, sum(len(tokenizer.decode(list(map(int, x)))) for x in ids))
    self.passages = {"plays": [p for i, t in enumerate(plays_texts.values())
                               for p in plays.passages(t, b.passages_per_play, seed=seed + i)]}
    for k, v in extra.items():
      self.passages[f"text:{k}"] = plays.passages(v, b.passages_per_play * len(plays_texts),
                                                  seed=seed)
    self.mc = {
        "cloze": [e for i, t in enumerate(plays_texts.values())
                  for e in plays.cloze_examples(t, b.mc_items_per_play, seed=seed + i)],
        "speaker": [e for i, t in enumerate(plays_texts.values())
                    for e in plays.speaker_examples(t, b.mc_items_per_play, seed=seed + i)]}
    ids = [np.asarray(tokenizer.encode(t), np.int32) for t in plays_texts.values()]
    self.prompts = continuation.prompts_from_texts(ids, b.gen_prompts, b.gen_prompt_tokens,
                                                   b.gen_new_tokens, seed=seed)

  def counts(self) -> dict:
    return {"likelihood_tokens": {k: int(sum(len(x) for x in v[0]))
                                  for k, v in self.likelihood.items()},
            "passages": {k: len(v) for k, v in self.passages.items()},
            "multiple_choice": {k: len(v) for k, v in self.mc.items()},
            "generation_prompts": len(self.prompts)}


def likelihood(kind: str, params, config, items: Items, budget, seq_len: int) -> dict:
  """nats/token and nats/char of each text set: causal NLL, A3 exact NLL (ar, perm:4),
  or the MDM NELBO (windows of seq_len with a quarter of context)."""
  common = dict(window=seq_len, context=seq_len // 4, seed=0)
  out = {}
  for name, (ids, chars) in items.likelihood.items():
    rows = {}
    if kind == "ar":
      rows["ar"] = evaluate.score_texts(params, config, ids, "ar", head="content",
                                        **common).to_dict()
    elif kind == "a3":
      rows["a3_ar"] = evaluate.score_texts(params, config, ids, "ar", **common).to_dict()
      rows["a3_perm4"] = evaluate.score_texts(params, config, ids, "perm:4",
                                              orders=budget.perm_orders, **common).to_dict()
    else:
      r = mdm.nelbo_texts(params, config, ids, num_samples=budget.elbo_samples, shift=True,
                          **common)
      rows["mdm_nelbo"] = {**r, "nll_per_token": r["nelbo_per_token"]}
    for r in rows.values():
      r["nats_per_char"] = r["nll_per_token"] * r["tokens"] / chars
      r["chars"] = chars
    out[name] = rows
  return out


def infilling(kind: str, params, config, items: Items, calls_ratio: int = 2) -> dict:
  """ROUGE-1/2/L and exact match of middle lines; A3 group and dynamic and MDM
  confidence unmasking fill calls_ratio tokens per call; the causal model fills
  left to right from the prefix alone (one call per token)."""
  methods = {"ar": ("ar",), "a3": ("a3", "a3-dynamic"), "mdm": ("mdm",)}[kind]
  out = {}
  for name, stories in items.passages.items():
    if not stories:
      continue
    out[name] = {}
    for method in methods:
      r = infill.evaluate_infill(params, config, items.tokenizer, stories, method=method,
                                 group_size=1 if method == "ar" else calls_ratio,
                                 batch_size=len(stories), mdm_shift=True)
      r["samples"] = [{"gold": s.middle, "generated": p}
                      for s, p in list(zip(stories, r.pop("predictions")))[:5]]
      out[name][method] = r
  return out


def multiple_choice_tasks(kind: str, params, config, items: Items, budget) -> dict:
  """Accuracy on the play cloze (mean token log-prob, as HellaSwag) and the speaker
  task (summed, the speech being shared by the choices); MDM by its conditional ELBO."""
  head = {"ar": "content", "a3": "query", "mdm": "mdm"}[kind]
  out = {}
  for task, reduction in (("cloze", "mean"), ("speaker", "sum")):
    out[task] = multiple_choice.evaluate_choices(
        params, config, items.tokenizer, items.mc[task], reduction=reduction, head=head,
        batch_size=32, elbo_samples=budget.mc_elbo_samples, mdm_shift=True)
  out["mean"] = float(np.mean([out[t]["accuracy"] for t in ("cloze", "speaker")]))
  return out


def generation(kind: str, params, config, items: Items, budget, judge) -> dict:
  """Continuations at equal calls, judged by `judge` = (params, config) of the causal
  control: A3 group and dynamic (confidence, entropy), MDM (confidence, entropy)."""
  runs = {"a3": [("a3", "group", "confidence"), ("a3-dynamic", "confidence", "confidence"),
                 ("a3-dynamic", "entropy", "entropy")],
          "mdm": [("mdm", "confidence", "confidence"), ("mdm", "entropy", "entropy")]}[kind]
  out = {}
  for method, label, criterion in runs:
    samples = continuation.generate(params, config, items.prompts, budget.gen_new_tokens,
                                    method=method, calls=budget.gen_calls, criterion=criterion,
                                    sampler=GEN_SAMPLER, seed=0, mdm_shift=True)
    r = continuation.judge(*judge, items.prompts, samples)
    r["examples"] = [{"prompt": items.tokenizer.decode(list(map(int, p))),
                      "continuation": items.tokenizer.decode(list(map(int, s)))}
                     for p, s in list(zip(items.prompts, samples))[:3]]
    out[label] = r
  out["best"] = min(v["perplexity"] for v in out.values())
  return out
