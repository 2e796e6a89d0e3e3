"""Dynamic resampling (the paper's Algorithm 2): commit the most certain blanks first.

Each step predicts every candidate blank given the committed tokens, scores it
from the model's distribution p, and commits the best `commit_per_step`:
  confidence  max_v p(v)
  entropy     -H(p)            (lowest entropy first)
  margin      p(top1) - p(top2)
  random      uniform, from the (seed, row id, step, position) key
  threshold   every candidate with max_v p(v) >= threshold (at least the best one)
Ties go to the leftmost position. With block_size b > 0 (semi-autoregressive),
a row's blanks are cut into blocks of b consecutive blanks, and only the
leftmost unfinished block's blanks are candidates.

Cost per cached step: a query row per candidate (every blank, or the b of a
block) plus a content row per token committed last step; that is
commit_per_step for the ranking criteria, and the candidate count for
'threshold' (any number may pass it), so use blocks with 'threshold'.

form 'cached' gives the tokens committed at step t the group id t (the exact A3
factorisation, and a KV cache that grows); 'recompute' is the authors' form
(all committed tokens one group, full re-run each step); 'uncached' re-runs the
cached form's grouping (its reference). See decode_loop for all three.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta

from a3_jax.decoding import loop as decode_loop, sampling
from a3_jax.config import ModelConfig
from a3_jax.decoding.loop import DecodeResult
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError

from a3_jax.decoding.choices import CRITERIA, SCORES  # noqa: F401 (re-export)


def decode_dynamic(params, config: ModelConfig, tokens_BxT, known_BxT, *, valid_BxT=None,
                   criterion: str = "confidence", commit_per_step: int = 1,
                   threshold: float = 0.9, block_size: int = 0,
                   sampler: SamplerConfig = SamplerConfig(), seed: int = 0, row_ids=None,
                   eos_id: int | None = None, pad_id: int = 0,
                   form: str = "cached") -> DecodeResult:
  """Fills every valid non-known position of tokens [B, T]; see the module docstring.

  known, valid: bool [B, T] (valid defaults to all True; invalid = padding).
  Returns DecodeResult: tokens, groups (commit step), exact log-prob, length.
  """
  decode_loop.check_form(form)
  if criterion not in CRITERIA:
    raise UserError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
  if commit_per_step < 1:
    raise UserError(f"commit_per_step must be >= 1, got {commit_per_step}")
  if block_size < 0:
    raise UserError(f"block_size must be >= 0 (0 = no blocks), got {block_size}")
  if criterion == "threshold" and not 0.0 <= threshold <= 1.0:
    raise UserError(f"threshold must be in [0, 1], got {threshold}")
  tokens = np.asarray(tokens_BxT)
  known = np.asarray(known_BxT, bool)
  valid = np.ones(tokens.shape, bool) if valid_BxT is None else np.asarray(valid_BxT, bool)
  if known.shape != tokens.shape or valid.shape != tokens.shape:
    raise UserError(f"known {known.shape} and valid {valid.shape} masks must have the "
                     f"token shape {tokens.shape}")
  rows = decode_loop.check_tokens(config, tokens, known & valid, row_ids)
  decode_loop.check_special_ids(config, eos_id, pad_id)
  most_blanks = max(1, int((valid & ~known).sum(axis=1).max()))
  num_query = min(block_size, most_blanks) if block_size else most_blanks
  return _decode_dynamic(
      meta.unbox(params), jnp.asarray(tokens_BxT, jnp.int32), jnp.asarray(known),
      jnp.asarray(valid), jnp.int32(seed), rows, jnp.float32(threshold),
      sampling.sampler_arrays(sampler), jnp.int32(-1 if eos_id is None else eos_id),
      jnp.int32(pad_id), jnp.int32(SCORES.index(criterion) if criterion in SCORES else 0),
      config=config, by_threshold=criterion == "threshold", num_query=num_query,
      num_commit=num_query if criterion == "threshold" else min(commit_per_step, num_query),
      num_known=decode_loop.prefill_size(known & valid), block_size=block_size, form=form)


def scores(logp_BxQxV, score_id, keys_BxQ):
  """Score SCORES[score_id] (may be traced) of each candidate: higher = commit sooner.

  logp [B, Q, V] model log-probs; keys [B, Q] for 'random'. Returns [B, Q] float32.
  """
  def confidence(logp, keys):
    return jnp.exp(jnp.max(logp, axis=-1))

  def entropy(logp, keys):
    return jnp.sum(jnp.exp(logp) * logp, axis=-1)

  def margin(logp, keys):
    top2 = jnp.exp(jax.lax.top_k(logp, 2)[0])
    return top2[..., 0] - top2[..., 1]

  def uniform(logp, keys):
    return jax.vmap(jax.vmap(jax.random.uniform))(keys)

  return jax.lax.switch(score_id, [confidence, entropy, margin, uniform], logp_BxQxV, keys_BxQ)


@functools.partial(jax.jit, static_argnames=(
    "config", "by_threshold", "num_query", "num_commit", "num_known", "block_size", "form"))
def _decode_dynamic(params, tokens_BxT, known_BxT, valid_BxT, seed, row_ids_B, threshold,
                    sampler, eos_id, pad_id, score_id, *, config, by_threshold, num_query,
                    num_commit, num_known, block_size, form):
  blank_BxT = valid_BxT & ~known_BxT
  int_max = jnp.iinfo(jnp.int32).max
  if block_size:
    rank_BxT = jnp.cumsum(blank_BxT, axis=1, dtype=jnp.int32) - 1
    block_BxT = jnp.where(blank_BxT, rank_BxT // block_size, int_max)

  def candidates(groups, done_B, num_query=num_query):
    remaining = blank_BxT & (groups < 0) & ~done_B[:, None]
    if block_size:
      current_B = jnp.min(jnp.where(remaining, block_BxT, int_max), axis=1)
      remaining = remaining & (block_BxT == current_B[:, None])
    idx_BxQ = jnp.argsort(~remaining, axis=1, stable=True)[:, :num_query].astype(jnp.int32)
    return idx_BxQ, jnp.take_along_axis(remaining, idx_BxQ, axis=1)

  def choose(logp_BxQxV, idx_BxQ, ok_BxQ, step):
    keys = sampling.position_keys(seed, row_ids_B, step, idx_BxQ, sampling.SCORE_STREAM)
    score_BxQ = jnp.where(ok_BxQ, scores(logp_BxQxV, score_id, keys), -jnp.inf)
    if by_threshold:
      best_B = jnp.argmax(score_BxQ, axis=1)
      slot_BxQ = jnp.broadcast_to(jnp.arange(num_query), idx_BxQ.shape)
      take = (score_BxQ >= threshold) | (slot_BxQ == best_B[:, None])
      return slot_BxQ, take & ok_BxQ
    _, slot_BxR = jax.lax.top_k(score_BxQ, num_commit)
    return slot_BxR, jnp.take_along_axis(ok_BxQ, slot_BxR, axis=1)

  # Candidate buffers shrink by powers of two as blanks run out (not with blocks, which
  # are small already, nor with a threshold, which may commit every candidate).
  buckets = () if block_size or by_threshold else tuple(
      1 << e for e in range((num_query - 1).bit_length() - 1, -1, -1)
      if 1 << e >= max(num_commit, 8))
  policy = decode_loop.Policy(num_query, num_commit, num_known, candidates, choose, buckets)
  return decode_loop.run(params, config, tokens_BxT, known_BxT, valid_BxT, seed, row_ids_B,
                         policy, sampler, eos_id, pad_id, form=form)
