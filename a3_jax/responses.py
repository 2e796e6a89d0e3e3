"""log p(response | prompt) of fine-tuning examples (a3_jax/data/sft.py), as `a3-eval
--responses=FILE.jsonl` reports it.

Each example is one item of the exact conditional scorer (conditional.py): the
prompt is the condition (group 0), the response the target, ordered by
`grouping` ('ar', 'one', 'block:K', 'perm:K': a random order per example from
`seed`). `exact` is the fraction of examples whose every response token is the
argmax of its prediction (teacher-forced; for 'ar', greedy decoding returns the
response).
"""

from __future__ import annotations

import os

import numpy as np

from a3_jax import conditional
from a3_jax.config import ModelConfig
from a3_jax.data import sft
from a3_jax.errors import UserError


def check_path(path: str) -> None:
  if not os.path.isfile(path) or not path.endswith(".jsonl"):
    raise UserError(f"--responses={path}: expected an existing .jsonl file of prompt/"
                    "response or chat records")


def read_examples(path: str, tokenizer) -> list[tuple[list[int], list[int]]]:
  """(prompt ids, response ids) of every example of a .jsonl file."""
  check_path(path)
  source = sft.ExampleSource([path])
  if not len(source):
    raise UserError(f"--responses={path} holds no examples")
  return [sft.example_ids(tokenizer, record, where) for where, record in source]


def score_responses(params, config: ModelConfig, tokenizer, path: str, *, grouping: str = "ar",
                    seed: int = 0, batch_size: int = 8) -> dict:
  """Totals and per-example scores of log p(response | prompt) under `grouping`."""
  examples = read_examples(path, tokenizer)
  for i, (prompt, response) in enumerate(examples):
    if len(prompt) + len(response) > config.max_seq_len:
      raise UserError(f"--responses={path}: example {i} is {len(prompt) + len(response)} "
                      f"tokens, more than the model's {config.max_seq_len}")
  tokens = [p + r for p, r in examples]
  groups = [np.concatenate([np.zeros(len(p), np.int32), conditional.target_groups(
      len(r), grouping, seed=seed, item=i)]) for i, (p, r) in enumerate(examples)]
  scores = conditional.conditional_logprobs(params, config, tokens, groups,
                                            batch_size=batch_size)
  count = int(scores.targets.sum())
  return {"responses": path, "grouping": grouping, "examples": len(examples),
          "response_tokens": count, "logp": float(scores.logp.sum()),
          "nll_per_token": float(-scores.logp.sum() / count),
          "mean_logp": float(scores.logp.mean()), "exact": float(scores.greedy.mean()),
          "per_example": [{"logp": float(lp), "tokens": int(n), "exact": bool(g)}
                          for lp, n, g in zip(scores.logp, scores.targets, scores.greedy)]}


def format_responses(out: dict) -> str:
  return (f"{out['responses']}: {out['examples']} examples, {out['response_tokens']} response "
          f"tokens, grouping {out['grouping']}: log p(response | prompt) = {out['logp']:.3f} "
          f"nats ({out['nll_per_token']:.4f} nats/token, {out['mean_logp']:.3f} per example), "
          f"exact {out['exact']:.3f}")
