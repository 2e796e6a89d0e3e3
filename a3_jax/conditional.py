"""Exact conditional scoring: log p(x_A | x_B) for disjoint position sets A and B.

An item is tokens [n] with group ids [n]:
  -1       absent: the token is removed from the pass (its position is neither
           seen nor scored; the positions of the others do not move)
   0       the condition B: one group, every token sees every other
  1..K     the target A, generated in groups 1, 2, ..., K (ids need not be
           contiguous; a group sees the condition and every lower group)
One pass of the query stream gives, exactly,
  log p(x_A | x_B) = sum_k sum_{i in G_k} log p(x_i | x_B, x_{G<k}),
the A3 factorisation of A given B under that order. Items are compacted to
their present tokens (positions kept), padded to a power-of-two width and
scored `batch_size` rows per pass; query rows are built for target positions
only, so a long condition costs content rows alone.

`target_groups` orders A: 'ar' (one token per group, left to right), 'one'
(all of A in one group), 'spans' (one group per span, in order), 'block:K',
'perm:K' (a random order of A cut into groups of K, from (seed, item)).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta

from a3_jax.config import ModelConfig
from a3_jax.errors import UserError
from a3_jax.loss import token_logprobs
from a3_jax.model import A3LM, Rows

ABSENT, CONDITION = -1, 0
TARGET_GROUPINGS = ("ar", "one", "spans", "block:K", "perm:K")


def target_groups(num_targets: int, grouping: str = "ar", *, span_ids=None, seed: int = 0,
                  item: int = 0) -> np.ndarray:
  """Group ids >= 1 [num_targets] of A's tokens (given in position order).

  span_ids [num_targets]: the span each target token belongs to ('spans' only).
  """
  kind, _, size = grouping.partition(":")
  if kind in ("block", "perm"):
    try:
      k = int(size)
    except ValueError:
      k = 0
    if k < 1:
      raise UserError(f"target grouping {grouping!r}: the group size must be a positive "
                      "integer")
    order = np.arange(num_targets)
    if kind == "perm":
      order = np.random.default_rng((seed, item)).permutation(num_targets)
    groups = np.empty(num_targets, np.int32)
    groups[order] = 1 + np.arange(num_targets) // k
    return groups
  if grouping == "ar":
    return np.arange(1, num_targets + 1, dtype=np.int32)
  if grouping == "one":
    return np.ones(num_targets, np.int32)
  if grouping == "spans":
    if span_ids is None or len(span_ids) != num_targets:
      raise UserError("target grouping 'spans' needs the span of every target token")
    _, dense = np.unique(np.asarray(span_ids), return_inverse=True)
    return (1 + dense).astype(np.int32)
  raise UserError(f"unknown target grouping {grouping!r}; choose one of {TARGET_GROUPINGS}")


@dataclasses.dataclass(frozen=True)
class ConditionalScores:
  """Per item: logp = log p(x_A | x_B) (nats), greedy = every target token is the
  argmax of its prediction, targets = |A|, token_logp = log p of each target
  token (position order)."""

  logp: np.ndarray
  greedy: np.ndarray
  targets: np.ndarray
  token_logp: tuple[np.ndarray, ...]


@functools.partial(jax.jit, static_argnames=("config",))
def _target_scores(params, tokens_BxT, groups_BxT, seg_BxT, pos_BxT, idx_BxQ, ok_BxQ, *,
                   config):
  """(log p, is argmax) [B, Q] of the tokens at idx, from query rows of those positions."""
  model = A3LM(config)
  take = functools.partial(jnp.take_along_axis, indices=idx_BxQ, axis=1)
  content = Rows(groups_BxT, seg_BxT, pos_BxT)
  query = Rows(take(groups_BxT) - 1, jnp.where(ok_BxQ, take(seg_BxT), 0), take(pos_BxT))
  _, g_BxQxD, _ = model.apply(params, tokens_BxT, content, query, method=A3LM.forward)
  logits_BxQxV = model.apply(params, g_BxQxD, method=A3LM.logits)
  target_BxQ = take(tokens_BxT)
  return (token_logprobs(logits_BxQxV, target_BxQ),
          jnp.argmax(logits_BxQxV, axis=-1) == target_BxQ)


def padded_width(n: int, cap: int) -> int:
  """A padded width: the next power of two >= n (at least 8), capped at cap (>= n)."""
  return min(max(8, 1 << max(n - 1, 0).bit_length()), max(cap, n))


def _compact(tokens, groups, positions, config: ModelConfig, where: str):
  """The present tokens of one item: (tokens, groups, positions) [m], checked."""
  tokens = np.asarray(tokens, np.int32)
  groups = np.asarray(groups, np.int32)
  positions = (np.arange(len(tokens), dtype=np.int32) if positions is None
               else np.asarray(positions, np.int32))
  if not tokens.shape == groups.shape == positions.shape or tokens.ndim != 1:
    raise UserError(f"{where}: tokens {tokens.shape}, group ids {groups.shape} and positions "
                    f"{positions.shape} must be equal-length vectors")
  if np.any(groups < ABSENT):
    raise UserError(f"{where}: group ids must be -1 (absent), 0 (condition) or >= 1 (target)")
  keep = groups != ABSENT
  if not np.any(groups >= 1):
    raise UserError(f"{where}: no target tokens to score")
  if np.any(tokens[keep] < 0) or np.any(tokens[keep] >= config.vocab_size):
    raise UserError(f"{where}: token ids must lie in [0, {config.vocab_size})")
  if np.any(positions[keep] < 0) or np.any(positions[keep] >= config.max_seq_len):
    raise UserError(f"{where}: positions must lie in [0, {config.max_seq_len}), the model's "
                    "length")
  if len(set(positions[keep].tolist())) != int(keep.sum()):
    raise UserError(f"{where}: two present tokens share a position")
  if int(keep.sum()) > config.max_seq_len:
    raise UserError(f"{where}: {int(keep.sum())} present tokens exceed the model's "
                    f"{config.max_seq_len} positions")
  return tokens[keep], groups[keep], positions[keep]


def conditional_logprobs(params, config: ModelConfig, tokens: Sequence[Sequence[int]],
                         groups: Sequence[Sequence[int]],
                         positions: Sequence[Sequence[int]] | None = None, *,
                         batch_size: int = 8) -> ConditionalScores:
  """log p(x_A | x_B) of each item (tokens [n], group ids [n], positions [n] default
  arange(n)); see the module docstring. One pass per `batch_size` items."""
  if batch_size < 1:
    raise UserError(f"batch_size must be >= 1, got {batch_size}")
  if len(tokens) != len(groups) or (positions is not None and len(positions) != len(tokens)):
    raise UserError("tokens, group ids and positions must list the same items")
  items = [_compact(t, g, None if positions is None else positions[i], config, f"item {i}")
           for i, (t, g) in enumerate(zip(tokens, groups))]
  params = meta.unbox(params)
  logp = np.zeros(len(items))
  greedy = np.zeros(len(items), bool)
  targets = np.asarray([int(np.sum(g >= 1)) for _, g, _ in items])
  token_logp = []
  for s in range(0, len(items), batch_size):
    chunk = items[s:s + batch_size]
    width = padded_width(max(len(t) for t, _, _ in chunk), config.max_seq_len)
    num_q = padded_width(max(int(np.sum(g >= 1)) for _, g, _ in chunk), width)
    tokens_BxT, groups_BxT, seg_BxT, pos_BxT = (np.zeros((batch_size, width), np.int32)
                                                for _ in range(4))
    idx_BxQ = np.zeros((batch_size, num_q), np.int32)  # where each target row looks
    ok_BxQ = np.zeros((batch_size, num_q), bool)
    for r, (t, g, p) in enumerate(chunk):
      m, where = len(t), np.flatnonzero(g >= 1)
      tokens_BxT[r, :m], groups_BxT[r, :m], seg_BxT[r, :m], pos_BxT[r, :m] = t, g, 1, p
      idx_BxQ[r, :len(where)], ok_BxQ[r, :len(where)] = where, True
    lp_BxQ, top_BxQ = _target_scores(params, *map(jnp.asarray, (
        tokens_BxT, groups_BxT, seg_BxT, pos_BxT, idx_BxQ, ok_BxQ)), config=config)
    lp_BxQ, top_BxQ = np.asarray(lp_BxQ, np.float64), np.asarray(top_BxQ)
    for r in range(len(chunk)):
      n = targets[s + r]
      logp[s + r] = lp_BxQ[r, :n].sum()
      greedy[s + r] = bool(top_BxQ[r, :n].all())
      token_logp.append(lp_BxQ[r, :n])
  return ConditionalScores(logp, greedy, targets, tuple(token_logp))
