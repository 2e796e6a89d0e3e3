"""Any-subset speculative decoding (Guo & Ermon 2025) on the decoding KV cache.

Samples the blanks of each row one at a time in a fixed order sigma, i.e. from
exactly the distribution of group decoding with singleton groups in that order,
while committing several tokens per model call:
  draft   the next k positions of sigma from the query stream in parallel, each
          from q_j = p(x_sigma_j | committed);
  verify  one pass with the drafts as singleton groups in sigma order gives
          p_j = p(x_sigma_j | committed, drafts 0..j-1) for every j at once
          (p_0 = q_0, so draft 0 is committed as soon as it is drawn);
  accept  draft j with probability min(1, p_j(x)/q_j(x)), in order; at the first
          rejection draw a replacement from normalise(max(0, p_j - q_j)) and stop.

Calls are fused so that every call commits at least one token:
  verify call  content rows of the k drafts + k-1 verification query rows + the k
               query rows of the next drafts, conditioned on all k drafts. If all
               are accepted those next drafts are valid (their draft 0 is the
               "bonus" token) and the next call verifies again.
  draft call   after a rejection: the replacement's content row + the k draft
               query rows conditioned on it; commits the new draft 0.
The prefill (the known tokens, group 0) is a draft call. With k = 1 every call is
one content row + one query row: sequential cached decoding, with the same keys
as `decode_groups` (it reproduces its singleton-group samples token for token).

A committed token at sigma rank r has group id r + 1 (known tokens 0), in the
cache and in the result, so `sequence_logprob(tokens, groups)` is the returned
log-probability. Randomness: draws come from (seed, row id, call, position)
keys, one stream each for drafts, acceptance and replacements, so a row's
sample does not depend on the batch. Sampler settings shape draft and target
alike (both are p under the same temperature / top-k / top-p). EOS: as in
`decode_loop`: a row stops once it holds a generated EOS with every earlier
position filled; the tokens committed after that one in sigma order, within the
same call, are taken back (truncating the sequential process at a stopping time
keeps the log-prob exact).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta

from a3_jax.config import ModelConfig
from a3_jax.decoding import cache as kv_cache, loop as decode_loop, sampling
from a3_jax.decoding.cache import KVCache
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError
from a3_jax.model import A3LM, Rows

# Random streams of a (seed, row, call, position) key, beside sampling's.
ACCEPT_STREAM = 2
RESIDUAL_STREAM = 3


class SpeculativeResult(NamedTuple):
  """tokens, groups [B, T] (0 known, sigma rank + 1 committed, -1 not committed);
  logprob [B] (exact, sequential factorisation); length [B] (as DecodeResult);
  calls [B]: model calls while the row was unfinished (prefill included);
  reached, accepted [B, K]: per draft slot j >= 1, how often a verification got
  to slot j and how often it accepted it (slot 0 is never verified)."""

  tokens: jax.Array
  groups: jax.Array
  logprob: jax.Array
  length: jax.Array
  calls: jax.Array
  reached: jax.Array
  accepted: jax.Array


class _State(NamedTuple):
  call: jax.Array         # scalar: the call about to run (prefill = 1)
  tokens: jax.Array       # [B, T] committed tokens; pad elsewhere
  groups: jax.Array       # [B, T]
  logprob: jax.Array      # [B]
  done: jax.Array         # [B]
  length: jax.Array       # [B]
  cache: KVCache
  fill: jax.Array         # [B]
  base: jax.Array         # [B] verify: rank of draft 0; draft: rank of the next draft 0
  verify: jax.Array       # [B] bool: drafts wait for verification
  draft_tok: jax.Array    # [B, K]
  draft_logits: jax.Array  # [B, K, V] the drafts' query logits (raw)
  calls: jax.Array        # [B]
  reached: jax.Array      # [B, K]
  accepted: jax.Array     # [B, K]


def sigma_ranks(order_BxT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Order ids [B, T] (0 known, >= 1 distinct per row, < 0 padding) ->
  (sigma [B, N] positions in order, zero-padded; count [B] blanks per row;
  rank [B, T]: sigma rank of a blank, -1 for known, T + N for padding)."""
  order = np.asarray(order_BxT)
  b, t = order.shape
  count = (order >= 1).sum(axis=1).astype(np.int32)
  n = max(1, int(count.max()) if b else 1)
  sigma = np.zeros((b, n), np.int32)
  rank = np.where(order == 0, -1, t + n).astype(np.int32)
  for row in range(b):
    blanks = np.flatnonzero(order[row] >= 1)
    ids = order[row, blanks]
    if len(np.unique(ids)) != len(ids):
      raise UserError(f"row {row}: order ids of blanks must be distinct (one position per "
                      "step of the sequential order)")
    ordered = blanks[np.argsort(ids, kind="stable")]
    sigma[row, :len(ordered)] = ordered
    rank[row, ordered] = np.arange(len(ordered))
  return sigma, count, rank


def decode_speculative(params, config: ModelConfig, tokens_BxT, order_BxT, *,
                       draft_size: int = 4, sampler: SamplerConfig = SamplerConfig(),
                       seed: int = 0, row_ids=None, eos_id: int | None = None,
                       pad_id: int = 0) -> SpeculativeResult:
  """Samples every blank one at a time in sigma order, k = draft_size per call at best
  (capped at the most blanks of any row).

  order [B, T] ints: 0 = known, >= 1 = a blank's place in sigma (distinct per
  row, gaps allowed), < 0 = padding; `group.schedule(known, order=...,
  group_size=1)` builds l2r / random ones. Returns a SpeculativeResult whose
  samples follow decode_groups with these singleton groups in distribution.
  """
  if draft_size < 1:
    raise UserError(f"draft size must be >= 1, got {draft_size}")
  tokens, order, rows = decode_loop.check_schedule(config, tokens_BxT, order_BxT, "order",
                                                    row_ids, eos_id, pad_id)
  sigma, count, rank = sigma_ranks(order)
  # No call drafts more than the blanks of a row (at most the row's length, which
  # check_schedule bounds by max_seq_len): a larger k would only compile bigger shapes.
  draft_size = min(draft_size, max(int(count.max()) if count.size else 1, 1))
  return _decode(meta.unbox(params), jnp.asarray(tokens, jnp.int32), jnp.asarray(sigma),
                 jnp.asarray(count), jnp.asarray(rank), jnp.int32(seed), rows,
                 sampling.sampler_arrays(sampler),
                 jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id),
                 config=config, k=draft_size,
                 num_known=decode_loop.prefill_size(order == 0))


def shaped_probs(logits_BxQxV, sampler):
  """The distribution a sampler draws from: softmax of the filtered, tempered
  logits, or one-hot of the argmax at temperature 0. [B, Q, V] float32."""
  temperature, top_k, top_p = sampler
  x = sampling.filter_logits(logits_BxQxV, jnp.maximum(temperature, 1e-6), top_k, top_p)
  hard = jax.nn.one_hot(jnp.argmax(logits_BxQxV, axis=-1), logits_BxQxV.shape[-1])
  return jnp.where(temperature > 0, jax.nn.softmax(x, axis=-1), hard)


def residual_sample(p_BxV, q_BxV, keys_B):
  """A draw from normalise(max(0, p - q)) (p where that is all zero: rounding)."""
  res_BxV = jnp.maximum(p_BxV - q_BxV, 0.0)
  res_BxV = jnp.where(jnp.sum(res_BxV, axis=-1, keepdims=True) > 0, res_BxV, p_BxV)
  u_B = jax.vmap(jax.random.uniform)(keys_B)
  return sampling.inverse_cdf(jnp.log(res_BxV), u_B).astype(jnp.int32)


def _take(x_BxQxV, tok_BxQ):
  return jnp.take_along_axis(x_BxQxV, tok_BxQ[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("config", "k", "num_known"))
def _decode(params, tokens_BxT, sigma_BxN, count_B, rank_BxT, seed, row_ids_B, sampler,
            eos_id, pad_id, *, config, k, num_known):
  model = A3LM(config)
  b, t = tokens_BxT.shape
  n = sigma_BxN.shape[1]
  v = config.vocab_size
  known_BxT = rank_BxT < 0
  valid_BxT = rank_BxT < t + n
  slot_K = jnp.arange(k, dtype=jnp.int32)

  forward = functools.partial(decode_loop.query_logits, model, params)

  def at_rank(rank_BxJ):
    """Positions of sigma ranks [B, J] and whether the rank is a blank of the row."""
    ok = (rank_BxJ >= 0) & (rank_BxJ < count_B[:, None])
    return jnp.take_along_axis(sigma_BxN, jnp.clip(rank_BxJ, 0, n - 1), axis=1), ok

  def query_rows(s):
    """k-1 verification rows (drafts 1..k-1), then k draft rows from rank d0."""
    live = ~s.done
    ver_rank = s.base[:, None] + slot_K[1:]
    ver_pos, ver_ok = at_rank(ver_rank)
    d0_B = jnp.where(s.verify, s.base + k, s.base)
    dr_pos, dr_ok = at_rank(d0_B[:, None] + slot_K)
    ver_ok = ver_ok & (s.verify & live)[:, None]
    dr_ok = dr_ok & live[:, None]
    limit = jnp.concatenate([ver_rank, jnp.broadcast_to(d0_B[:, None], (b, k))], axis=1)
    ok = jnp.concatenate([ver_ok, dr_ok], axis=1)
    return Rows(limit, ok.astype(jnp.int32), jnp.concatenate([ver_pos, dr_pos], axis=1)), d0_B

  def advance(s, logits_BxQxV, d0_B):
    """Acceptance, replacement, next drafts, EOS. Returns (state, append_ok [B, K]):
    the content slots of this call that hold committed tokens."""
    live = ~s.done
    ver_logits, dr_logits = logits_BxQxV[:, :k - 1], logits_BxQxV[:, k - 1:]
    m_B = jnp.clip(count_B - s.base, 0, k)  # drafts that exist (verify mode)
    if k > 1:
      d_BxJ = s.draft_tok[:, 1:]
      p_BxJxV = shaped_probs(ver_logits, sampler)
      q_BxJxV = shaped_probs(s.draft_logits[:, 1:], sampler)
      ver_pos, _ = at_rank(s.base[:, None] + slot_K[1:])
      keys = sampling.position_keys(seed, row_ids_B, s.call, ver_pos, ACCEPT_STREAM)
      u_BxJ = jax.vmap(jax.vmap(jax.random.uniform))(keys)
      acc_BxJ = u_BxJ * _take(q_BxJxV, d_BxJ) < _take(p_BxJxV, d_BxJ)
      exists_BxJ = (slot_K[1:] < m_B[:, None]) & (s.verify & live)[:, None]
      rej_BxJ = exists_BxJ & ~acc_BxJ
      i_B = jnp.where(jnp.any(rej_BxJ, axis=1), 1 + jnp.argmax(rej_BxJ, axis=1), m_B)
      at_i = jnp.clip(i_B - 1, 0, k - 2)
      p_i = jnp.take_along_axis(p_BxJxV, at_i[:, None, None], axis=1)[:, 0]
      q_i = jnp.take_along_axis(q_BxJxV, at_i[:, None, None], axis=1)[:, 0]
      rep_pos = jnp.take_along_axis(ver_pos, at_i[:, None], axis=1)
      rep_keys = sampling.position_keys(seed, row_ids_B, s.call, rep_pos, RESIDUAL_STREAM)
      rep_B = residual_sample(p_i, q_i, rep_keys[:, 0])
      ver_lp_BxJxV = jax.nn.log_softmax(ver_logits, axis=-1)
      lp_d_BxJ = _take(ver_lp_BxJxV, d_BxJ)
      lp_rep_B = jnp.take_along_axis(
          jnp.take_along_axis(ver_lp_BxJxV, at_i[:, None, None], axis=1)[:, 0],
          rep_B[:, None], axis=1)[:, 0]
      reached = (slot_K[1:] <= i_B[:, None]) & exists_BxJ
      accepted = (slot_K[1:] < i_B[:, None]) & exists_BxJ
      pad = jnp.zeros((b, 1), jnp.int32)
      s = s._replace(reached=s.reached + jnp.concatenate([pad, reached], axis=1),
                     accepted=s.accepted + jnp.concatenate([pad, accepted], axis=1))
    else:
      i_B = m_B
      d_BxJ = jnp.zeros((b, 0), jnp.int32)
      lp_d_BxJ = jnp.zeros((b, 0), jnp.float32)
      rep_B, lp_rep_B = jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.float32)
    rejected = s.verify & (i_B < m_B)

    # Next drafts: after a draft call, or when every one of k drafts was accepted.
    new_B = live & (~s.verify | (i_B == k)) & (d0_B < count_B)
    dr_pos, _ = at_rank(d0_B[:, None] + slot_K)
    keys = sampling.position_keys(seed, row_ids_B, s.call, dr_pos, sampling.SAMPLE_STREAM)
    new_tok_BxK = sampling.sample(dr_logits, keys, sampler)
    lp_new0_B = _take(jax.nn.log_softmax(dr_logits[:, :1], axis=-1), new_tok_BxK[:, :1])[:, 0]

    # This call's commits, contiguous in sigma rank from c0: accepted drafts 1..i-1,
    # then the replacement or the new draft 0 (verify mode); the new draft 0 (draft mode).
    c0_B = jnp.where(s.verify, s.base + 1, d0_B)
    num_B = jnp.where(s.verify, i_B - 1 + rejected + new_B, new_B) * live
    last_tok = jnp.where(rejected, rep_B, new_tok_BxK[:, 0])
    last_lp = jnp.where(rejected, lp_rep_B, lp_new0_B)
    fill_tok = jnp.broadcast_to(last_tok[:, None], (b, k))
    fill_lp = jnp.broadcast_to(last_lp[:, None], (b, k))
    pad_tok = jnp.concatenate([d_BxJ, jnp.zeros((b, 1), jnp.int32)], axis=1)
    pad_lp = jnp.concatenate([lp_d_BxJ, jnp.zeros((b, 1), jnp.float32)], axis=1)
    is_draft = s.verify[:, None] & (slot_K < (i_B - 1)[:, None])
    tok_BxK = jnp.where(is_draft, pad_tok, fill_tok)
    lp_BxK = jnp.where(is_draft, pad_lp, fill_lp)
    take_BxK = slot_K < num_B[:, None]
    c_pos_BxK, _ = at_rank(c0_B[:, None] + slot_K)

    # EOS: the first commit after which a generated EOS has every earlier position filled.
    # Slot j's view: the positions filled once commits 0..j are in.
    tokens1 = decode_loop.scatter(s.tokens, c_pos_BxK, take_BxK, tok_BxK)
    filled_BxKxT = valid_BxT[:, None] & (rank_BxT[:, None] <= (c0_B[:, None] + slot_K)[..., None])
    e_BxK, stop_BxK = decode_loop.first_eos(
        jnp.broadcast_to(tokens1[:, None], filled_BxKxT.shape), filled_BxKxT,
        filled_BxKxT & ~known_BxT[:, None], valid_BxT[:, None], eos_id)
    stop_BxK = stop_BxK & take_BxK
    stop_B = jnp.any(stop_BxK, axis=1)
    first = jnp.argmax(stop_BxK, axis=1)
    take_BxK = take_BxK & ~(stop_B[:, None] & (slot_K > first[:, None]))
    length = jnp.where(stop_B, jnp.take_along_axis(e_BxK, first[:, None], axis=1)[:, 0] + 1,
                       s.length)

    tokens = decode_loop.scatter(s.tokens, c_pos_BxK, take_BxK, tok_BxK)
    groups = decode_loop.scatter(s.groups, c_pos_BxK, take_BxK, c0_B[:, None] + slot_K + 1)
    finished = ~jnp.any(valid_BxT & (groups < 0), axis=1)
    append_ok = jnp.where(s.verify[:, None], slot_K < i_B[:, None], slot_K == 0) & live[:, None]
    state = s._replace(
        call=s.call + 1, tokens=tokens, groups=groups,
        logprob=s.logprob + jnp.sum(jnp.where(take_BxK, lp_BxK, 0.0), axis=1),
        done=s.done | stop_B | finished, length=length,
        base=jnp.where(new_B, d0_B, jnp.where(rejected, s.base + i_B + 1, s.base)),
        verify=jnp.where(new_B, True, jnp.where(rejected, False, s.verify)),
        draft_tok=jnp.where(new_B[:, None], new_tok_BxK, s.draft_tok),
        draft_logits=jnp.where(new_B[:, None, None], dr_logits, s.draft_logits),
        calls=s.calls + live)
    return state, append_ok

  def prefill(s):
    # Known tokens (group 0) in P content rows, with the first k draft rows.
    tokens_BxP, content, known_ok_BxP = decode_loop.prefill_rows(s.tokens, known_BxT,
                                                                 num_known)
    query, d0_B = query_rows(s)
    logits, (kk, vv) = forward(tokens_BxP, content, query, None)
    cache, fill = kv_cache.append(s.cache, s.fill, kk, vv, known_ok_BxP, 0)
    s, _ = advance(s._replace(cache=cache, fill=fill), logits, d0_B)
    return s

  def step(s):
    # Content rows: the k drafts (verify) or the replacement at rank base - 1 (draft).
    c_rank_BxK = jnp.where(s.verify[:, None], s.base[:, None], s.base[:, None] - 1) + slot_K
    c_pos_BxK, c_ok_BxK = at_rank(c_rank_BxK)
    c_ok_BxK = c_ok_BxK & jnp.where(s.verify[:, None], True, slot_K == 0) & ~s.done[:, None]
    c_tok_BxK = jnp.where(s.verify[:, None], s.draft_tok,
                          jnp.take_along_axis(s.tokens, c_pos_BxK, axis=1))
    content = Rows(c_rank_BxK + 1, c_ok_BxK.astype(jnp.int32), c_pos_BxK)
    query, d0_B = query_rows(s)
    # Every content row's K/V is written in place at slots [fill, fill + k); the
    # committed ones (a prefix: the accepted drafts, or the replacement) are then
    # marked used, each with its own group id; the rest stay invisible and are
    # overwritten by the next call.
    slot_BxK, _ = kv_cache.slots(s.cache, s.fill, c_ok_BxK)
    logits, (kk, vv) = forward(c_tok_BxK, content, query, s.cache, slot_BxK)
    s, append_ok = advance(s, logits, d0_B)
    keep_BxK = append_ok & c_ok_BxK
    drop = s.cache.group.shape[1]
    marks = kv_cache.mark(s.cache, jnp.where(keep_BxK, slot_BxK, drop), c_rank_BxK + 1)
    return s._replace(cache=KVCache(kk, vv, *marks),
                      fill=s.fill + jnp.sum(keep_BxK, axis=1, dtype=jnp.int32))

  state = _State(
      call=jnp.asarray(1, jnp.int32),
      tokens=jnp.where(known_BxT, tokens_BxT, pad_id).astype(jnp.int32),
      groups=jnp.where(known_BxT, 0, -1).astype(jnp.int32),
      logprob=jnp.zeros((b,), jnp.float32),
      done=count_B == 0,
      length=jnp.full((b,), t, jnp.int32),
      cache=kv_cache.empty(config, b, t),
      fill=jnp.zeros((b,), jnp.int32),
      base=jnp.zeros((b,), jnp.int32),
      verify=jnp.zeros((b,), bool),
      draft_tok=jnp.zeros((b, k), jnp.int32),
      draft_logits=jnp.zeros((b, k, v), jnp.float32),
      calls=jnp.zeros((b,), jnp.int32),
      reached=jnp.zeros((b, k), jnp.int32),
      accepted=jnp.zeros((b, k), jnp.int32))
  state = prefill(state)
  state = jax.lax.while_loop(lambda s: ~jnp.all(s.done) & (s.call <= n + 1), step, state)
  result = SpeculativeResult(state.tokens, state.groups, state.logprob, state.length,
                             state.calls, state.reached, state.accepted)
  chex.assert_shape([result.tokens, result.groups], (b, t))
  chex.assert_shape([result.logprob, result.length, result.calls], (b,))
  chex.assert_shape([result.reached, result.accepted], (b, k))
  return result

