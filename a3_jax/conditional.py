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
their present tokens (positions kept) and scored `batch_size` to a pass by
teacher_forced.score_items, whose query rows are the target positions only, so a
long condition costs content rows alone.

`target_groups` orders A: 'ar' (one token per group, left to right), 'one'
(all of A in one group), 'spans' (one group per span, in order), 'block:K',
'perm:K' (a random order of A cut into groups of K, from (seed, item)).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from a3_jax.config import ModelConfig
from a3_jax.errors import UserError
from a3_jax.teacher_forced import Item, score_items

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
  scores = score_items(params, config, [Item(t, g, p, g >= 1) for t, g, p in items],
                       batch_size=batch_size)
  return ConditionalScores(np.asarray([lp.sum() for lp, _ in scores]),
                           np.asarray([bool(hit.all()) for _, hit in scores]),
                           np.asarray([len(lp) for lp, _ in scores]),
                           tuple(lp for lp, _ in scores))
