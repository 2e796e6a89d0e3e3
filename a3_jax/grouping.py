"""Grouping strategies: which positions are generated together, and in which order.

A strategy turns (key, segment ids, positions) into integer group ids [B, T].
Every document (segment) gets its own grouping, computed from positions within
the document, so packing never changes a document's grouping structure.

  ar          one token per group, left to right        group = pos
  block:k     contiguous blocks of k, left to right       group = pos // k
  perm:k      a random order of the document cut into groups of k
  mix:S=w,... each row draws one of the strategies S with probability ~ w

A curriculum is a list of (strategy, steps); `stage_groups` selects the stage
with `lax.switch` on a traced index, so changing stages never recompiles. A
curriculum stage may also be

  causal      the content stream trained as a causal LM (the AR model the paper
              adapts from; one stream, so about half the cost of an A3 step);
              groups = pos. A stage, not a grouping: it has no query stream to score.

Fine-tuning rows (a `roles` feature, a3_jax/roles.py) are grouped by
`response_groups`: every prompt token is group 0 of its example, and the
strategy groups the response alone (its tokens ranked 0, 1, ... in position
order, as if the response were the whole document), from group 1. `given_rate`
puts each response token in group 0 as well with that probability (infilling-
style conditioning on a random subset); group-0 tokens are never scored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from a3_jax.config import finite_in
from a3_jax.errors import UserError
from a3_jax.roles import RESPONSE


@dataclasses.dataclass(frozen=True)
class Strategy:
  """kind in {'ar', 'block', 'perm', 'mix', 'causal'}; k for block/perm; parts for mix
  ('causal' only as a curriculum stage)."""

  kind: str
  k: int = 1
  parts: tuple[tuple["Strategy", float], ...] = ()

  @property
  def name(self) -> str:
    if self.kind in ("ar", "causal"):
      return self.kind
    if self.kind == "mix":
      return "mix:" + ",".join(f"{s.name}={w:g}" for s, w in self.parts)
    return f"{self.kind}:{self.k}"


def _parse_simple(spec: str) -> Strategy:
  fields = spec.strip().split(":")
  if fields == ["ar"]:
    return Strategy("ar")
  if len(fields) == 2 and fields[0] in ("block", "perm"):
    try:
      k = int(fields[1])
    except ValueError:
      k = 0
    if k < 1:
      raise UserError(f"group size in {spec!r} must be a positive integer")
    return Strategy(fields[0], k)
  raise UserError(f"unknown grouping strategy {spec!r}; expected 'ar', 'block:K', "
                   "'perm:K' or 'mix:S1=W1,S2=W2'")


def parse_strategy(spec: str) -> Strategy:
  """Parses 'ar', 'block:4', 'perm:8' or 'mix:perm:8=0.5,block:8=0.5'."""
  spec = spec.strip()
  if not spec.startswith("mix:"):
    return _parse_simple(spec)
  parts = []
  for item in spec[len("mix:"):].split(","):
    name, sep, weight = item.rpartition("=")
    try:
      w = float(weight) if sep else -1.0
    except ValueError:
      w = -1.0
    if not (w > 0 and finite_in(w, "float32")):  # weights are float32 logits' exps
      raise UserError(f"mixture item {item!r} in {spec!r} needs a positive weight: "
                       "write STRATEGY=WEIGHT, a finite WEIGHT > 0")
    strategy = _parse_simple(name)
    parts.append((strategy, w))
  return Strategy("mix", parts=tuple(parts))


def _perm_groups(key, seg_BxT, k: int):
  """Random order within each segment, cut into groups of k."""
  b, t = seg_BxT.shape
  idx_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  shuffled_BxT = jax.random.permutation(key, idx_BxT, axis=1, independent=True)

  def one_row(order_T, seg_T):
    # Stable sort by segment keeps the random order inside each segment.
    order_T = order_T[jnp.argsort(seg_T[order_T], stable=True)]
    seg_sorted_T = seg_T[order_T]
    first_T = jnp.searchsorted(seg_sorted_T, seg_sorted_T, side="left")
    rank_T = jnp.arange(t, dtype=jnp.int32) - first_T.astype(jnp.int32)
    return jnp.zeros((t,), jnp.int32).at[order_T].set(rank_T // k)

  return jax.vmap(one_row)(shuffled_BxT, seg_BxT)


def sample_groups(strategy: Strategy, key, seg_BxT, pos_BxT):
  """Group ids [B, T] int32 for one strategy (traceable; key may be unused)."""
  pos_BxT = jnp.asarray(pos_BxT, jnp.int32)
  if strategy.kind in ("ar", "causal"):
    return pos_BxT
  if strategy.kind == "block":
    return pos_BxT // strategy.k
  if strategy.kind == "perm":
    return _perm_groups(key, jnp.asarray(seg_BxT, jnp.int32), strategy.k)
  if strategy.kind == "mix":
    choice_key, *part_keys = jax.random.split(key, len(strategy.parts) + 1)
    weights = jnp.asarray([w for _, w in strategy.parts], jnp.float32)
    pick_B = jax.random.categorical(choice_key, jnp.log(weights), shape=(pos_BxT.shape[0],))
    out = jnp.zeros_like(pos_BxT)
    for i, ((part, _), part_key) in enumerate(zip(strategy.parts, part_keys)):
      out = jnp.where((pick_B == i)[:, None], sample_groups(part, part_key, seg_BxT, pos_BxT), out)
    return out
  raise UserError(f"unknown strategy kind {strategy.kind!r}")


_MIX_END = re.compile(r"=[^=:,]*:[0-9]+$")


@dataclasses.dataclass(frozen=True)
class Curriculum:
  """Stages (strategy, steps) run in order; the last stage continues past its end."""

  stages: tuple[tuple[Strategy, int], ...]

  @property
  def boundaries(self) -> np.ndarray:
    """Step at which each stage after the first begins."""
    return np.cumsum([steps for _, steps in self.stages])[:-1]

  @property
  def total_steps(self) -> int:
    return int(sum(steps for _, steps in self.stages))

  def stage_index(self, step):
    """Index of the stage that `step` (int or traced) falls into."""
    return jnp.searchsorted(jnp.asarray(self.boundaries, jnp.int32), step, side="right")

  def stage(self, step: int) -> Strategy:
    """The strategy of the stage that (host) `step` falls into."""
    return self.stages[int(np.searchsorted(self.boundaries, step, side="right"))][0]

  def stage_name(self, step: int) -> str:
    return self.stage(step).name

  def steps_run(self, total_steps: int, start: int = 0) -> list[tuple[Strategy, int]]:
    """(strategy, steps) of each stage within steps [start, total_steps) of a run (the
    last stage runs on to total_steps)."""
    out, begin = [], 0
    for i, (strategy, steps) in enumerate(self.stages):
      end = total_steps if i == len(self.stages) - 1 else min(total_steps, begin + steps)
      out.append((strategy, max(0, end - max(begin, start))))
      begin = end
    return out

  @property
  def has_causal(self) -> bool:
    return any(s.kind == "causal" for s, _ in self.stages)


def equal_curriculum(stages: Sequence[str], steps: int) -> str:
  """The curriculum spec of `stages` in equal shares of `steps` (the last takes the
  remainder), e.g. the paper's ('ar', 'block:2', 'block:4', 'perm:4', 'perm:8')."""
  each = max(1, steps // len(stages))
  counts = [each] * (len(stages) - 1) + [max(1, steps - each * (len(stages) - 1))]
  return ",".join(f"{s}:{n}" for s, n in zip(stages, counts))


def parse_curriculum(spec: str) -> Curriculum:
  """Parses 'ar:300,block:2:200,perm:4:300' (STRATEGY:STEPS, comma separated;
  'causal:STEPS' is a causal-LM stage, see the module docstring).

  A mixture stage lists its parts after 'mix:' and ends with the steps:
  'mix:perm:8=0.5,block:8=0.5:400'.
  """
  items = [s.strip() for s in spec.split(",") if s.strip()]
  if not items:
    raise UserError("curriculum is empty; expected e.g. 'ar:300,block:2:200,perm:4:300'")
  stages = []
  i = 0
  while i < len(items):
    text = items[i]
    i += 1
    if text.startswith("mix:"):  # a mixture's parts run up to the one ending '=W:STEPS'
      while not _MIX_END.search(text) and i < len(items):
        text += "," + items[i]
        i += 1
    strategy_spec, sep, steps_text = text.rpartition(":")
    steps = int(steps_text) if sep and steps_text.isdigit() else 0
    if steps < 1:
      raise UserError(f"curriculum stage {text!r} must end with ':STEPS' (a positive "
                       f"integer), as in 'ar:300,block:2:200,perm:4:300'")
    strategy = (Strategy("causal") if strategy_spec.strip() == "causal"
                else parse_strategy(strategy_spec))
    stages.append((strategy, steps))
  return Curriculum(tuple(stages))


def check_group_sizes(curriculum: Curriculum, seq_len: int) -> None:
  """Refuses a stage whose groups hold a whole row: every token would be in the first
  group, predicted from nothing (a unigram model)."""
  for strategy, _ in curriculum.stages:
    for part in [p for p, _ in strategy.parts] or [strategy]:
      if part.kind in ("block", "perm") and part.k >= seq_len:
        raise UserError(f"--curriculum stage {strategy.name!r}: groups of {part.k} tokens "
                        f"cover a whole row of --seq_len={seq_len}, so every token would be "
                        f"predicted from nothing; use group sizes below {seq_len}")


def response_groups(strategy: Strategy, key, seg_BxT, pos_BxT, roles_BxT,
                    given_rate: float = 0.0):
  """Group ids [B, T]: prompt tokens (and, with probability given_rate each, response
  tokens) in group 0; the other response tokens grouped by `strategy` over themselves
  alone, from group 1 (see the module docstring). Rows are packed: a segment's tokens
  are contiguous and its positions count from 0."""
  strategy_key, given_key = jax.random.split(key)
  target_BxT = jnp.asarray(roles_BxT) == RESPONSE
  if given_rate > 0:
    target_BxT &= jax.random.uniform(given_key, target_BxT.shape) >= given_rate
  # rank = targets before this token in its segment (which starts pos tokens earlier).
  before_BxT = jnp.cumsum(target_BxT, axis=1, dtype=jnp.int32) - target_BxT
  start_BxT = jnp.maximum(jnp.arange(target_BxT.shape[1]) - jnp.asarray(pos_BxT, jnp.int32), 0)
  rank_BxT = before_BxT - jnp.take_along_axis(before_BxT, start_BxT, axis=1)
  target_seg_BxT = jnp.where(target_BxT, jnp.asarray(seg_BxT, jnp.int32), 0)
  groups_BxT = sample_groups(strategy, strategy_key, target_seg_BxT, rank_BxT)
  return jnp.where(target_BxT, groups_BxT + 1, 0)


def batch_groups_of(strategy: Strategy, key, seg_BxT, pos_BxT, roles_BxT=None,
                    given_rate: float = 0.0):
  """Group ids of a batch: sample_groups, or on fine-tuning rows (roles given)
  response_groups."""
  if roles_BxT is None:
    return sample_groups(strategy, key, seg_BxT, pos_BxT)
  return response_groups(strategy, key, seg_BxT, pos_BxT, roles_BxT, given_rate)


def stage_groups(curriculum: Curriculum, stage_index, key, seg_BxT, pos_BxT, roles_BxT=None,
                 given_rate: float = 0.0):
  """Group ids of the given (traced) stage; one compiled program for all stages.
  With roles (fine-tuning rows), the response groups of each stage's strategy."""
  branches = [lambda key, seg, pos, s=s: batch_groups_of(s, key, seg, pos, roles_BxT, given_rate)
              for s, _ in curriculum.stages]
  if len(branches) == 1:
    return branches[0](key, seg_BxT, pos_BxT)
  return jax.lax.switch(stage_index, branches, key, seg_BxT, pos_BxT)


def first_group_mask(groups_BxT, seg_BxT):
  """True where a token's group is the smallest of its segment (nothing to condition on)."""
  b, t = groups_BxT.shape
  def row_min(g_T, s_T):
    return jax.ops.segment_min(g_T, s_T, num_segments=t + 1)[s_T]
  return groups_BxT == jax.vmap(row_min)(groups_BxT, seg_BxT)

