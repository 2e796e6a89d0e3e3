"""Choosing the length of a blank of unknown length (`<blank:MIN-MAX>`).

For each candidate length L the prompt is laid out with a blank of L tokens:
the known tokens before the blank are group 0, the known tokens after it (at
the positions they have for that L) group 1, and every blank is left out of the
pass (segment 0, its positions still reserved). The query stream of group 1 then
gives log p(suffix | prefix, L) exactly, the suffix tokens being one group.
All candidates are rows of one batched teacher-forced pass. The chosen length
maximises score + log prior (ties: the shortest).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from a3_jax.config import ModelConfig
from a3_jax.decoding.prompt import LengthTemplate
from a3_jax.errors import UserError
from a3_jax.teacher_forced import Item, score_items


class LengthChoice(NamedTuple):
  """lengths, score (log p(suffix | prefix, L)), log_prior, total: [n] each; chosen: int."""

  lengths: np.ndarray
  score: np.ndarray
  log_prior: np.ndarray
  total: np.ndarray
  chosen: int

  def as_json(self) -> dict:
    return {"chosen_length": self.chosen, "candidates": [
        {"length": int(n), "score": float(s), "log_prior": float(p), "total": float(t)}
        for n, s, p, t in zip(self.lengths, self.score, self.log_prior, self.total)]}


def log_prior(spec: str, lengths) -> np.ndarray:
  """Log prior over candidate lengths: 'uniform' (zeros) or 'poisson:MEAN'."""
  lengths = np.asarray(lengths, np.float64)
  if spec == "uniform":
    return np.zeros_like(lengths)
  name, _, arg = spec.partition(":")
  if name == "poisson":
    try:
      mean = float(arg)
    except ValueError:
      mean = -1.0
    if not mean > 0:
      raise UserError(f"length prior {spec!r}: write poisson:MEAN with MEAN > 0")
    return lengths * math.log(mean) - mean - np.array([math.lgamma(n + 1) for n in lengths])
  raise UserError(f"unknown length prior {spec!r}: uniform | poisson:MEAN")


def layout(template: LengthTemplate):
  """Candidate rows: tokens, groups [n, T_max] (0 prefix, 1 suffix, -1 blank/padding)."""
  n_before = len(template.before_tokens)
  rows = []
  for length in template.lengths:
    tokens, known = template.fill(length)
    groups = np.where(known, np.where(np.arange(len(tokens)) < n_before, 0, 1), -1)
    rows.append((tokens, groups))
  width = max(len(t) for t, _ in rows)
  tokens = np.stack([np.pad(t, (0, width - len(t))) for t, _ in rows]).astype(np.int32)
  groups = np.stack([np.pad(g, (0, width - len(g)), constant_values=-1) for _, g in rows])
  return tokens, groups.astype(np.int32)


def suffix_logprob(params, config: ModelConfig, tokens_NxT, groups_NxT) -> np.ndarray:
  """Sum over group-1 positions of log p(x_i | group 0): [N] float64, all candidates
  in one pass (the -1 positions left out, the others keeping their positions)."""
  tokens_NxT, groups_NxT = np.asarray(tokens_NxT, np.int32), np.asarray(groups_NxT, np.int32)
  items = []
  for tokens, groups in zip(tokens_NxT, groups_NxT):
    present = np.flatnonzero(groups >= 0)
    items.append(Item(tokens[present], groups[present], present, groups[present] == 1))
  scores = score_items(params, config, items, batch_size=len(items))
  return np.asarray([lp.sum() for lp, _ in scores])


def choose_length(params, config: ModelConfig, template: LengthTemplate,
                  prior: str | np.ndarray = "uniform") -> LengthChoice:
  """Scores every candidate length in one pass and picks the best (see module doc).

  prior: a `log_prior` spec, or log-prior values [n] for template.lengths.
  """
  tokens, groups = layout(template)
  if tokens.shape[1] > config.max_seq_len:
    raise UserError(f"the longest candidate takes {tokens.shape[1]} tokens, more than the "
                    f"model's maximum of {config.max_seq_len}")
  lengths = np.asarray(template.lengths)
  lp = log_prior(prior, lengths) if isinstance(prior, str) else np.asarray(prior, np.float64)
  if lp.shape != lengths.shape:
    raise UserError(f"length prior has {lp.shape} values for {len(lengths)} candidate lengths")
  score = suffix_logprob(params, config, tokens, groups)
  total = score + lp
  return LengthChoice(lengths, score, lp, total, int(lengths[np.argmax(total)]))
