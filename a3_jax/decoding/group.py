"""Group decoding (the paper's Algorithm 1) with an exact KV cache.

The caller gives tokens [B, T] and group ids [B, T]: 0 = known (conditioned on,
mutually visible), g >= 1 = a blank generated in group g, < 0 = padding. Groups
are decoded in increasing id per row (ids need not be contiguous; rows may have
different schedules and numbers of groups); the g-th group of a row is committed
at step g and gets group id g in the result. `schedule` builds ids for the usual
orders. Continuation (blanks after a prompt) and infilling (blanks anywhere) are
the same call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta

from a3_jax.decoding import loop as decode_loop, sampling
from a3_jax.config import ModelConfig
from a3_jax.decoding.loop import DecodeResult, sequence_logprob  # noqa: F401 (re-export)
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError

from a3_jax.decoding.choices import ORDERS  # noqa: F401 (re-export)


def schedule(known_BxT, *, order: str = "l2r", group_size: int = 1, valid_BxT=None,
             seed: int = 0, row_ids=None) -> np.ndarray:
  """Group ids [B, T] for the blanks (valid, not known) of each row.

  l2r: blanks left to right in groups of group_size; random: blanks in a random
  order per row (drawn from (seed, row id), so independent of the batch), cut
  into groups of group_size. Known positions get 0, invalid ones -1.
  """
  if order not in ORDERS:
    raise UserError(f"unknown order {order!r}; choose one of {ORDERS}")
  if group_size < 1:
    raise UserError(f"group size must be >= 1, got {group_size}")
  known = np.asarray(known_BxT, bool)
  valid = np.ones_like(known) if valid_BxT is None else np.asarray(valid_BxT, bool)
  rows = np.arange(known.shape[0]) if row_ids is None else np.asarray(row_ids)
  groups = np.where(known & valid, 0, -1).astype(np.int32)
  for b in range(known.shape[0]):
    blanks = np.flatnonzero(valid[b] & ~known[b])
    if order == "random":
      blanks = np.random.default_rng((seed, int(rows[b]))).permutation(blanks)
    groups[b, blanks] = 1 + np.arange(len(blanks)) // group_size
  return groups


def largest_group(groups_BxT) -> int:
  """Size of the largest blank group (>= 1) over all rows."""
  groups = np.asarray(groups_BxT)
  largest = 1
  for row in groups:
    ids = row[row >= 1]
    if ids.size:
      largest = max(largest, int(np.unique(ids, return_counts=True)[1].max()))
  return largest


def decode_groups(params, config: ModelConfig, tokens_BxT, groups_BxT, *,
                  sampler: SamplerConfig = SamplerConfig(), seed: int = 0, row_ids=None,
                  eos_id: int | None = None, pad_id: int = 0, form: str = "cached",
                  max_group_size: int | None = None) -> DecodeResult:
  """Samples every blank of a group schedule; see the module docstring.

  params: the (unboxed) A3LM params. row_ids [B]: the id each row's randomness
  derives from (default 0..B-1). form: 'cached' | 'uncached' | 'recompute'
  (decode_loop). max_group_size: the static group buffer (default: the largest
  group); calls with equal shapes and buffer share one compiled decoder.
  Returns DecodeResult (tokens, groups = commit step, exact log-prob under that
  grouping, length).
  """
  decode_loop.check_form(form)
  tokens, groups, rows = decode_loop.check_schedule(config, tokens_BxT, groups_BxT, "group",
                                                     row_ids, eos_id, pad_id)
  group_size = largest_group(groups)
  if max_group_size is not None:
    if not group_size <= max_group_size <= tokens.shape[1]:
      raise UserError(f"max_group_size {max_group_size} must lie between the largest "
                       f"group ({group_size} positions) and the length ({tokens.shape[1]})")
    group_size = max_group_size
  return _decode_groups(meta.unbox(params), jnp.asarray(tokens_BxT, jnp.int32),
                        jnp.asarray(groups_BxT, jnp.int32), jnp.int32(seed), rows,
                        sampling.sampler_arrays(sampler),
                        jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id),
                        config=config, group_size=group_size,
                        num_known=decode_loop.prefill_size(groups == 0), form=form)


@functools.partial(jax.jit, static_argnames=("config", "group_size", "num_known", "form"))
def _decode_groups(params, tokens_BxT, groups_BxT, seed, row_ids_B, sampler, eos_id, pad_id,
                   *, config, group_size, num_known, form):
  sched_BxT = groups_BxT
  int_max = jnp.iinfo(jnp.int32).max

  def candidates(groups, done_B):
    # The row's next group: the smallest scheduled id among uncommitted blanks.
    remaining = (sched_BxT >= 1) & (groups < 0) & ~done_B[:, None]
    next_B = jnp.min(jnp.where(remaining, sched_BxT, int_max), axis=1)
    member = remaining & (sched_BxT == next_B[:, None])
    idx_BxK = jnp.argsort(~member, axis=1, stable=True)[:, :group_size].astype(jnp.int32)
    return idx_BxK, jnp.take_along_axis(member, idx_BxK, axis=1)

  def choose(logp_BxKxV, idx_BxK, ok_BxK, step):
    del logp_BxKxV, step
    return jnp.broadcast_to(jnp.arange(group_size), idx_BxK.shape), ok_BxK

  policy = decode_loop.Policy(group_size, group_size, num_known, candidates, choose)
  return decode_loop.run(params, config, tokens_BxT, groups_BxT == 0, groups_BxT >= 0, seed,
                         row_ids_B, policy, sampler, eos_id, pad_id, form=form)
