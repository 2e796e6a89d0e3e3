"""The one teacher-forced pass: log p of given tokens under a grouping.

Every scorer runs through here: exact likelihood (evaluate.py), task scoring
(tasks/scoring.py), conditional scoring and lm-eval (conditional.py), blank
lengths (decoding/blank_length.py), the log-prob of a decoded sample
(decoding/loop.py), and the training loss with its validation (train/step.py).

  head='query'    the A3 factorisation: the query row at position i predicts x_i
                  from the tokens of groups < group(i) (docs/design.md §1).
  head='content'  the causal LM on the content stream: the row at i-1 predicts x_i,
                  so position 0 is predicted by nothing (log p 0, not a hit).

On the host, `score_items` packs items (tokens, groups, positions, scored: [n]
each) `batch_size` to a pass, padded by one rule (`padded_width`), and runs query
rows for the scored positions only, so a long condition costs content rows alone.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta

from a3_jax.config import ModelConfig
from a3_jax.errors import UserError
from a3_jax.loss import token_logprobs
from a3_jax.model import A3LM, Rows, stream_rows

HEADS = ("query", "content")


def check_head(head: str) -> None:
  if head not in HEADS:
    raise UserError(f"unknown head {head!r}; choose one of {HEADS}")


def predictions(model: A3LM, params, tokens_BxT, groups_BxT, seg_BxT=None, pos_BxT=None, *,
                head: str = "query", idx_BxQ=None, ok_BxQ=None):
  """(logits [B, S, V] fp32, targets [B, S]) of one pass (traceable).

  head='query': S = T, or S = Q with idx_BxQ: query rows at those positions only
  (ok_BxQ False: a padding row). head='content': S = T-1, row s predicts x_{s+1}.
  seg (0 = padding) defaults to all 1, positions to arange(T).
  """
  content, query = stream_rows(groups_BxT, seg_BxT, pos_BxT)
  if head == "content":
    h, _, _ = model.apply(params, tokens_BxT, content, None, method=A3LM.forward)
    return model.apply(params, h[:, :-1], method=A3LM.logits), tokens_BxT[:, 1:]
  targets = tokens_BxT
  if idx_BxQ is not None:
    take = functools.partial(jnp.take_along_axis, indices=idx_BxQ, axis=1)
    query = Rows(take(query.limit), jnp.where(ok_BxQ, take(query.seg), 0), take(query.pos))
    targets = take(tokens_BxT)
  _, g, _ = model.apply(params, tokens_BxT, content, query, method=A3LM.forward,
                        content_out=False)
  return model.apply(params, g, method=A3LM.logits), targets


def token_scores(model: A3LM, params, tokens_BxT, groups_BxT, seg_BxT=None, pos_BxT=None, *,
                 head: str = "query", idx_BxQ=None, ok_BxQ=None):
  """(log p fp32, is argmax) [B, S] of the tokens at idx_BxQ (S = Q), else at every
  position (S = T); see the module docstring for the heads (traceable)."""
  if head == "query":
    logits, targets = predictions(model, params, tokens_BxT, groups_BxT, seg_BxT, pos_BxT,
                                  idx_BxQ=idx_BxQ, ok_BxQ=ok_BxQ)
    return token_logprobs(logits, targets), jnp.argmax(logits, axis=-1) == targets
  logits, targets = predictions(model, params, tokens_BxT, groups_BxT, seg_BxT, pos_BxT,
                                head="content")
  first = ((0, 0), (1, 0))  # position 0: nothing predicts it
  lp_BxT = jnp.pad(token_logprobs(logits, targets), first)
  hit_BxT = jnp.pad(jnp.argmax(logits, axis=-1) == targets, first)
  if idx_BxQ is None:
    return lp_BxT, hit_BxT
  take = functools.partial(jnp.take_along_axis, indices=idx_BxQ, axis=1)
  return take(lp_BxT), take(hit_BxT)


@functools.partial(jax.jit, static_argnames=("config", "head"))
def _token_scores(params, tokens_BxT, groups_BxT, seg_BxT, pos_BxT, idx_BxQ, ok_BxQ, *,
                  config, head):
  return token_scores(A3LM(config), params, tokens_BxT, groups_BxT, seg_BxT, pos_BxT,
                      head=head, idx_BxQ=idx_BxQ, ok_BxQ=ok_BxQ)


def padded_width(n: int, cap: int) -> int:
  """The padding rule: the next power of two >= n (at least 8), capped at cap (>= n)."""
  return min(max(8, 1 << max(n - 1, 0).bit_length()), max(cap, n))


class Item(NamedTuple):
  """One row to score: tokens, groups [n] int; positions [n] (None: arange(n));
  scored [n] bool: the tokens whose log p is wanted."""

  tokens: np.ndarray
  groups: np.ndarray
  positions: np.ndarray | None
  scored: np.ndarray


def score_items(params, config: ModelConfig, items: Sequence[Item], *, head: str = "query",
                batch_size: int = 8, progress: Callable[[int, int], None] | None = None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per item: (log p float64, is argmax) [m] of its m scored tokens, in item order.

  `batch_size` items per pass, padded to padded_width of the longest (rows) and of
  the most scored (query rows). `progress(done, total)`, if given, is called about
  every 10 % of the items and at the end.
  """
  check_head(head)
  if batch_size < 1:
    raise UserError(f"batch_size must be >= 1, got {batch_size}")
  params = meta.unbox(params)
  out, reported = [], 0
  for s in range(0, len(items), batch_size):
    chunk = items[s:s + batch_size]
    width = padded_width(max(len(it.tokens) for it in chunk), config.max_seq_len)
    num_q = padded_width(max(int(np.sum(it.scored)) for it in chunk), width)
    tokens_BxT, groups_BxT, seg_BxT, pos_BxT = (np.zeros((batch_size, width), np.int32)
                                                for _ in range(4))
    idx_BxQ = np.zeros((batch_size, num_q), np.int32)
    ok_BxQ = np.zeros((batch_size, num_q), bool)
    for r, it in enumerate(chunk):
      n, where = len(it.tokens), np.flatnonzero(it.scored)
      tokens_BxT[r, :n], groups_BxT[r, :n], seg_BxT[r, :n] = it.tokens, it.groups, 1
      pos_BxT[r, :n] = np.arange(n) if it.positions is None else it.positions
      idx_BxQ[r, :len(where)], ok_BxQ[r, :len(where)] = where, True
    lp_BxQ, hit_BxQ = _token_scores(params, *map(jnp.asarray, (
        tokens_BxT, groups_BxT, seg_BxT, pos_BxT, idx_BxQ, ok_BxQ)), config=config, head=head)
    lp_BxQ, hit_BxQ = np.asarray(lp_BxQ, np.float64), np.asarray(hit_BxQ)
    for r, it in enumerate(chunk):
      m = int(np.sum(it.scored))
      out.append((lp_BxQ[r, :m], hit_BxQ[r, :m]))
    if progress is not None and (len(out) - reported >= len(items) / 10 or len(out) == len(items)):
      progress(len(out), len(items))
      reported = len(out)
  return out
