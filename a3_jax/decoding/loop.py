"""The decoding loop shared by group decoding and dynamic resampling.

A decoder is a `Policy`: which blanks to query at each step (`candidates`) and
which of them to commit (`choose`). Each step the loop gets the candidates'
query-stream logits, samples the chosen ones (keys from (seed, row id, step,
position)), commits them with group id = step, and retires a row once its
blanks are filled or it holds EOS with every earlier position filled.

The form says how logits are computed:
  cached     prefill of the known tokens, then one fused call per step: content
             rows of the previous step's commits + query rows of the candidates,
             against a KV cache (docs/design.md §3); 2k rows per step, not 2T.
  uncached   the whole content stream re-run every step, committed tokens grouped
             by commit step: the same function as `cached`, its reference.
  recompute  the authors' form: re-run every step with all committed tokens in
             one group. Its samples come from other conditionals than the A3
             factorisation; the returned log-prob is recomputed under the
             commit-step grouping by one teacher-forced pass.

Output (`DecodeResult`): the tokens, the group of every position (0 known,
t >= 1 committed at step t, -1 never committed), the exact log-probability of
the committed tokens under that grouping, and the text length (one past the
first generated EOS of a row that stopped on it, else T). Positions after an
EOS that were committed in the step a row stops are taken back (same-group
tokens are conditionally independent, so this is exact); positions after EOS
committed earlier stay in the sample, because later tokens were conditioned on
them, and lie past `length`.

The stream says which head predicts a position:
  query      A3: the query stream at the position itself (every form)
  content    the causal LM (decoding/causal.py; cached form, one position per
             step, left to right): the content stream one position to its left.
             Group ids are positions (causal visibility); only the known tokens
             before a row's first blank are prefilled, and later known tokens are
             committed in their turn as given (no sample, no log-prob), so each
             position sees exactly the tokens to its left.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from a3_jax import teacher_forced
from a3_jax.decoding import cache as kv_cache, sampling
from a3_jax.config import ModelConfig
from a3_jax.decoding.cache import KVCache
from a3_jax.model import A3LM, Rows
from a3_jax.errors import UserError

FORMS = ("cached", "uncached", "recompute")
STREAMS = ("query", "content")


class DecodeResult(NamedTuple):
  """tokens, groups [B, T] int32; logprob [B] float32; length [B] int32."""

  tokens: jax.Array
  groups: jax.Array
  logprob: jax.Array
  length: jax.Array


class Policy(NamedTuple):
  """How a decoder picks positions. Q = num_query candidates, R = num_commit,
  P = num_known (the prefill buffer: at least the most known tokens of a row).

  candidates(groups_BxT, done_B) -> (idx_BxQ positions, ok_BxQ)
  choose(logp_BxQxV, idx_BxQ, ok_BxQ, step) -> (slot_BxR indices into Q, take_BxR)

  query_buckets: smaller candidate buffers (descending, each >= R) for a policy whose
  candidates are the first Q uncommitted valid positions of a row: once every row
  has at most q of them left, the loop goes on with Q = q, so late steps query fewer
  rows. Such a policy's candidates then take a `num_query=q` keyword.
  """

  num_query: int
  num_commit: int
  num_known: int
  candidates: Callable
  choose: Callable
  query_buckets: tuple[int, ...] = ()


class _State(NamedTuple):
  step: jax.Array     # scalar: the step about to run; its commits get this group id
  tokens: jax.Array   # [B, T]; uncommitted positions hold pad_id
  groups: jax.Array   # [B, T]
  logprob: jax.Array  # [B]
  done: jax.Array     # [B]
  length: jax.Array   # [B]
  cache: KVCache | None
  fill: jax.Array     # [B] cache slots in use
  pend_idx: jax.Array  # [B, R] positions committed last step (content rows to run)
  pend_ok: jax.Array   # [B, R]


def check_form(form: str) -> None:
  if form not in FORMS:
    raise UserError(f"unknown decoding form {form!r}; choose one of {FORMS}")


def check_tokens(config: ModelConfig, tokens: np.ndarray, known: np.ndarray,
                 row_ids) -> np.ndarray:
  """Validates [B, T] tokens (known positions in the vocabulary); returns row ids [B]."""
  if tokens.ndim != 2 or tokens.shape[1] < 1:
    raise UserError(f"tokens must be a [batch, length] array, got shape {tokens.shape}")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise UserError(f"tokens must be integers, got dtype {tokens.dtype}")
  if tokens.shape[1] > config.max_seq_len:
    raise UserError(f"sequence of {tokens.shape[1]} positions is longer than the model's "
                     f"maximum of {config.max_seq_len}")
  bad = known & ((tokens < 0) | (tokens >= config.vocab_size))
  if bad.any():
    raise UserError(f"known token {int(tokens[bad][0])} is outside the vocabulary "
                     f"[0, {config.vocab_size})")
  rows = np.arange(tokens.shape[0]) if row_ids is None else np.asarray(row_ids)
  if rows.shape != (tokens.shape[0],) or not np.issubdtype(rows.dtype, np.integer):
    raise UserError(f"row_ids must be {tokens.shape[0]} integers, got {rows!r}")
  return rows.astype(np.int32)


def check_schedule(config: ModelConfig, tokens_BxT, ids_BxT, what: str, row_ids,
                   eos_id: int | None, pad_id: int):
  """Validates a decoder's inputs: integer ids [B, T] shaped like the tokens (0 = known),
  the tokens, the row ids and the special ids. Returns (tokens, ids, row ids) as numpy."""
  ids = np.asarray(ids_BxT)
  tokens = np.asarray(tokens_BxT)
  if ids.shape != tokens.shape or not np.issubdtype(ids.dtype, np.integer):
    raise UserError(f"{what} ids must be integers shaped like the tokens {tokens.shape}, "
                    f"got {ids.dtype} {ids.shape}")
  rows = check_tokens(config, tokens, ids == 0, row_ids)
  check_special_ids(config, eos_id, pad_id)
  return tokens, ids, rows


def check_special_ids(config: ModelConfig, eos_id: int | None, pad_id: int) -> None:
  for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
    if value is not None and not 0 <= value < config.vocab_size:
      raise UserError(f"{name} {value} is outside the vocabulary [0, {config.vocab_size})")


def prefill_size(known: np.ndarray) -> int:
  """Static prefill buffer P for bool [B, T] known tokens: the most in one row,
  rounded up to a power of two so that prompts of similar length share a compile."""
  most = int(known.sum(axis=1).max()) if known.size else 0
  return min(known.shape[1], 1 << max(most - 1, 0).bit_length())


def sequence_logprob(params, config: ModelConfig, tokens_BxT, groups_BxT):
  """Exact log p of the committed tokens under a grouping, one teacher-forced pass.

  groups: 0 = known (conditioned on), t >= 1 = generated in group t, -1 = padding.
  Returns [B] float32: the sum over generated positions of log p(x_i | x_{G<g_i}).
  """
  groups_BxT = jnp.asarray(groups_BxT, jnp.int32)
  seg_BxT = (groups_BxT >= 0).astype(jnp.int32)
  lp_BxT, _ = teacher_forced.token_scores(A3LM(config), params,
                                          jnp.asarray(tokens_BxT, jnp.int32),
                                          jnp.maximum(groups_BxT, 0), seg_BxT)
  return jnp.sum(jnp.where(groups_BxT > 0, lp_BxT, 0.0), axis=1)


def scatter(x_BxT, pos_BxR, take_BxR, values):
  """x with x[b, pos[b, r]] = values[b, r] where take[b, r]."""
  b, t = x_BxT.shape
  row_BxR = jnp.broadcast_to(jnp.arange(b)[:, None], pos_BxR.shape)
  return x_BxT.at[row_BxR, jnp.where(take_BxR, pos_BxR, t)].set(values, mode="drop")


def query_logits(model: A3LM, params, tokens, content: Rows, query: Rows, cache,
                 cache_slots=None):
  """(query-stream logits, K/V) of one decoding call: the content rows' K/V are
  returned (no cache), or written into the cache in place at cache_slots."""
  _, g, kv = model.apply(params, tokens, content, query, cache, method=A3LM.forward,
                         content_out=False, cache_slots=cache_slots)
  return model.apply(params, g, method=A3LM.logits), kv


def prefill_rows(tokens_BxT, known_BxT, num_known: int):
  """The known tokens (group 0, mutually visible) gathered into P = num_known content
  rows: (tokens [B, P], Rows, ok [B, P]); with a cache, their K/V go to slots [0, P)."""
  b = tokens_BxT.shape[0]
  idx_BxP = jnp.argsort(~known_BxT, axis=1, stable=True)[:, :num_known].astype(jnp.int32)
  ok_BxP = jnp.take_along_axis(known_BxT, idx_BxP, axis=1)
  content = Rows(jnp.zeros((b, num_known), jnp.int32), ok_BxP.astype(jnp.int32), idx_BxP)
  return jnp.take_along_axis(tokens_BxT, idx_BxP, axis=1), content, ok_BxP


def first_eos(tokens_XxT, filled_XxT, generated_XxT, valid_XxT, eos_id):
  """(e, stop) [X]: the position of the first generated EOS (T if none), and whether a
  row stops on it: every valid position before it is filled (X: any leading dims)."""
  t = tokens_XxT.shape[-1]
  is_eos = generated_XxT & (tokens_XxT == eos_id)
  e_X = jnp.where(jnp.any(is_eos, axis=-1), jnp.argmax(is_eos, axis=-1), t)
  gap_X = jnp.any(valid_XxT & ~filled_XxT & (jnp.arange(t) < e_X[..., None]), axis=-1)
  return e_X, (e_X < t) & ~gap_X


def run(params, config: ModelConfig, tokens_BxT, known_BxT, valid_BxT, seed, row_ids_B,
        policy: Policy, sampler, eos_id, pad_id, *, form: str,
        stream: str = "query") -> DecodeResult:
  """Decodes every valid non-known position of every row (traceable; jit the caller).

  sampler: `sampling.sampler_arrays`; eos_id (-1 = none) and pad_id: int scalars.
  All of these may be traced, so one compiled decoder serves every setting.
  """
  model = A3LM(config)
  b, t = tokens_BxT.shape
  r = policy.num_commit
  pos_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  known_BxT = known_BxT & valid_BxT
  causal = stream == "content"
  given_BxT = known_BxT  # committed as given, never sampled
  if causal:  # prefill the known prefix only; later known tokens come in their turn
    blank_BxT = valid_BxT & ~known_BxT
    first_B = jnp.where(jnp.any(blank_BxT, axis=1), jnp.argmax(blank_BxT, axis=1), t)
    known_BxT = known_BxT & (pos_BxT < first_B[:, None])

  def forward(tokens, content, query, cache, cache_slots=None):
    if causal:  # each candidate reads the content row one position to its left
      h, _, kv = model.apply(params, tokens, content, None, cache, method=A3LM.forward,
                             cache_slots=cache_slots)
      left_BxQxR = (content.pos[:, None, :] == query.pos[:, :, None] - 1) & (content.seg[:, None, :] > 0)
      left_BxQ = jnp.argmax(left_BxQxR, axis=-1)
      g = jnp.take_along_axis(h, left_BxQ[..., None], axis=1)
      return model.apply(params, g, method=A3LM.logits), kv
    return query_logits(model, params, tokens, content, query, cache, cache_slots)

  def prefill(state, idx_BxQ, ok_BxQ):
    # Known tokens (group 0) in P content rows, fused with step 1's queries.
    tokens_BxP, content, known_ok_BxP = prefill_rows(state.tokens, known_BxT, policy.num_known)
    group_BxP = content.pos if causal else content.limit  # causal: groups are positions
    content = content._replace(limit=group_BxP)
    query = Rows(jnp.zeros_like(idx_BxQ), ok_BxQ.astype(jnp.int32), idx_BxQ)
    logits, (k, v) = forward(tokens_BxP, content, query, None)
    cache, fill = kv_cache.append(state.cache, state.fill, k, v, known_ok_BxP, group_BxP)
    return logits, state._replace(cache=cache, fill=fill)

  def cached_step(state, idx_BxQ, ok_BxQ):
    prev = state.step - 1  # the previous step's commits carry group id prev
    group_BxR = state.pend_idx if causal else jnp.full((b, r), prev)
    content = Rows(group_BxR, state.pend_ok.astype(jnp.int32), state.pend_idx)
    query = Rows(jnp.full(idx_BxQ.shape, prev), ok_BxQ.astype(jnp.int32), idx_BxQ)
    tokens_BxR = jnp.take_along_axis(state.tokens, state.pend_idx, axis=1)
    # The commits' keys/values go straight into the cache, in every layer.
    slot_BxR, fill = kv_cache.slots(state.cache, state.fill, state.pend_ok)
    logits, (k, v) = forward(tokens_BxR, content, query, state.cache, slot_BxR)
    cache = kv_cache.KVCache(k, v, *kv_cache.mark(state.cache, slot_BxR, group_BxR))
    return logits, state._replace(cache=cache, fill=fill)

  def full_step(state, idx_BxQ, ok_BxQ):
    committed = state.groups >= 0
    exact = form == "uncached"
    limit = jnp.where(committed & exact, state.groups, 0)
    content = Rows(limit, committed.astype(jnp.int32), pos_BxT)
    query_limit = state.step - 1 if exact else 0
    query = Rows(jnp.full(idx_BxQ.shape, query_limit), ok_BxQ.astype(jnp.int32), idx_BxQ)
    logits, _ = forward(state.tokens, content, query, None)
    return logits, state

  def step(state, logits_fn, candidates=policy.candidates):
    t_now = state.step
    idx_BxQ, ok_BxQ = candidates(state.groups, state.done)
    ok_BxQ = ok_BxQ & ~state.done[:, None]
    logits_BxQxV, state = logits_fn(state, idx_BxQ, ok_BxQ)
    logp_BxQxV = jax.nn.log_softmax(logits_BxQxV, axis=-1)
    slot_BxR, take_BxR = policy.choose(logp_BxQxV, idx_BxQ, ok_BxQ, t_now)
    take_BxR = take_BxR & jnp.take_along_axis(ok_BxQ, slot_BxR, axis=1)
    pos_BxR = jnp.take_along_axis(idx_BxQ, slot_BxR, axis=1)
    chosen_BxRxV = jnp.take_along_axis(logits_BxQxV, slot_BxR[..., None], axis=1)
    keys_BxR = sampling.position_keys(seed, row_ids_B, t_now, pos_BxR, sampling.SAMPLE_STREAM)
    given_BxR = jnp.take_along_axis(given_BxT, pos_BxR, axis=1)
    tok_BxR = jnp.where(given_BxR, jnp.take_along_axis(tokens_BxT, pos_BxR, axis=1),
                        sampling.sample(chosen_BxRxV, keys_BxR, sampler))
    lp_BxR = jnp.take_along_axis(
        jnp.take_along_axis(logp_BxQxV, slot_BxR[..., None], axis=1), tok_BxR[..., None],
        axis=-1)[..., 0]
    lp_BxR = jnp.where(given_BxR, 0.0, lp_BxR)

    # EOS: the first generated EOS, once every position before it is filled.
    tokens1 = scatter(state.tokens, pos_BxR, take_BxR, tok_BxR)
    groups1 = scatter(state.groups, pos_BxR, take_BxR, t_now)
    e_B, stop_B = first_eos(tokens1, groups1 >= 0, (groups1 > 0) & ~given_BxT, valid_BxT,
                            eos_id)
    stop_B = stop_B & ~state.done
    take_BxR = take_BxR & ~(stop_B[:, None] & (pos_BxR > e_B[:, None]))
    length = jnp.where(stop_B, e_B + 1, state.length)

    tokens = scatter(state.tokens, pos_BxR, take_BxR, tok_BxR)
    groups = scatter(state.groups, pos_BxR, take_BxR, t_now)
    finished_B = ~jnp.any(valid_BxT & (groups < 0), axis=1)
    return state._replace(
        step=t_now + 1, tokens=tokens, groups=groups,
        logprob=state.logprob + jnp.sum(jnp.where(take_BxR, lp_BxR, 0.0), axis=1),
        done=state.done | stop_B | finished_B, length=length,
        pend_idx=jnp.where(take_BxR, pos_BxR, 0), pend_ok=take_BxR)

  cached = form == "cached"
  state = _State(
      step=jnp.asarray(1, jnp.int32),
      tokens=jnp.where(known_BxT, tokens_BxT, pad_id).astype(jnp.int32),
      groups=jnp.where(known_BxT, 0, -1).astype(jnp.int32),
      logprob=jnp.zeros((b,), jnp.float32),
      done=~jnp.any(valid_BxT & ~known_BxT, axis=1),
      length=jnp.full((b,), t, jnp.int32),
      cache=kv_cache.empty(config, b, t) if cached else None,
      fill=jnp.zeros((b,), jnp.int32),
      pend_idx=jnp.zeros((b, r), jnp.int32),
      pend_ok=jnp.zeros((b, r), bool))
  state = step(state, prefill if cached else full_step)
  # One while_loop per candidate buffer size; a loop hands over to the next (smaller)
  # buffer once no row has more uncommitted positions than that buffer holds.
  sizes = (policy.num_query,) + tuple(q for q in policy.query_buckets if q < policy.num_query)
  for i, q in enumerate(sizes):
    candidates = (policy.candidates if i == 0 else
                  lambda g, d, q=q: policy.candidates(g, d, num_query=q))
    smaller = sizes[i + 1] if i + 1 < len(sizes) else -1

    def more(s, smaller=smaller):
      left_B = jnp.sum(valid_BxT & (s.groups < 0), axis=1) * ~s.done
      return ~jnp.all(s.done) & (s.step <= t) & (jnp.max(left_B) > smaller)

    state = jax.lax.while_loop(
        more, lambda s, c=candidates: step(s, cached_step if cached else full_step, c), state)
  logprob, groups = state.logprob, state.groups
  if causal:  # known tokens committed in their turn were given, as group 0 says
    groups = jnp.where(given_BxT & (groups > 0), 0, groups)
  if form == "recompute":
    logprob = sequence_logprob(params, config, state.tokens, state.groups)
  result = DecodeResult(state.tokens, groups, logprob, state.length)
  chex.assert_shape([result.tokens, result.groups], (b, t))
  chex.assert_shape([result.logprob, result.length], (b,))
  chex.assert_type([result.tokens, result.groups, result.logprob, result.length],
                   [jnp.int32, jnp.int32, jnp.float32, jnp.int32])
  return result
