"""log p(continuation | context) of (context, continuation) token pairs.

The A3 way (head='query', the paper's protocol): the context is group 0 (its
tokens see each other) and the continuation's tokens are singleton groups in
order, so one pass gives sum_j log p(c_j | context, c_<j) exactly. The causal
baseline (head='content'): the content stream with `ar` groups, shifted. The
masked-diffusion baseline (mdm_loglikelihoods, DiffuLLaMA's protocol): minus the
NELBO of the continuation given the context, Monte Carlo over masks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

import jax

from a3_jax import mdm
from a3_jax.config import ModelConfig
from a3_jax.errors import UserError
from a3_jax.teacher_forced import Item, check_head, padded_width, score_items

Pair = tuple[Sequence[int], Sequence[int]]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """Token ids of a (context, continuation) pair, as lm-evaluation-harness makes them:
  the context's trailing spaces move to the continuation, and the continuation's
  ids are those of the whole text after the context's, when the context's ids
  are a prefix of the whole's (else the continuation encoded alone)."""
  stripped = context.rstrip(" ")
  continuation = context[len(stripped):] + continuation
  ctx = tokenizer.encode(stripped) if stripped else []
  whole = tokenizer.encode(stripped + continuation)
  if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
    return ctx, whole[len(ctx):]
  return ctx, tokenizer.encode(continuation)


def _row(ctx: Sequence[int], cont: Sequence[int], head: str, max_len: int, start_id: int):
  """tokens, groups, scored [n] of one pair, the context cut from the left to fit."""
  if not cont:
    raise UserError("a continuation encodes to no tokens: nothing to score")
  if head == "content" and not ctx:
    ctx = [start_id]  # the causal LM predicts the first token from a start token
  keep = max_len - len(cont)
  if keep < (1 if head == "content" else 0):
    raise UserError(f"a continuation of {len(cont)} tokens does not fit the model's "
                     f"{max_len} positions")
  ctx = list(ctx)[max(len(ctx) - keep, 0):]
  tokens = np.asarray(ctx + list(cont), np.int32)
  n_ctx, n = len(ctx), len(tokens)
  if head == "query":
    groups = np.concatenate([np.zeros(n_ctx, np.int32), np.arange(1, len(cont) + 1)])
  else:
    groups = np.arange(n, dtype=np.int32)
  return tokens, groups.astype(np.int32), np.arange(n) >= n_ctx


def loglikelihoods(params, config: ModelConfig, pairs: Sequence[Pair], *, head: str = "query",
                   batch_size: int = 8, max_len: int | None = None,
                   start_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(log p(continuation | context) [n], continuation token counts [n]) of token pairs.

  start_id: the token the causal head conditions on when a context is empty.
  Scored `batch_size` pairs to a pass by teacher_forced.score_items.
  """
  check_head(head)
  max_len = min(max_len or config.max_seq_len, config.max_seq_len)
  rows = [_row(c, x, head, max_len, start_id) for c, x in pairs]
  scores = score_items(params, config, [Item(t, g, None, sc) for t, g, sc in rows],
                       head=head, batch_size=batch_size)
  return (np.asarray([lp.sum() for lp, _ in scores]),
          np.asarray([int(r[2].sum()) for r in rows]))


def mdm_loglikelihoods(params, config: ModelConfig, pairs: Sequence[Pair], *,
                       num_samples: int = 16, noise_ids: Sequence[int] | None = None,
                       seed: int = 0, shift: bool = False, batch_size: int = 8,
                       max_len: int | None = None,
                       mask_id: int = mdm.MASK_ID) -> tuple[np.ndarray, np.ndarray]:
  """(-NELBO of continuation | context [n], continuation token counts [n]): the
  diffusion model's score of each pair, a lower bound on log p(continuation | context).

  Only continuation tokens are masked (each with probability t) and scored; the
  context is always seen. Pairs with the same noise id (the choices of one
  example) share their times and, token by token from the continuation's start,
  their masks, so choices are compared under common random numbers.
  """
  max_len = min(max_len or config.max_seq_len, config.max_seq_len)
  noise_ids = list(range(len(pairs))) if noise_ids is None else list(noise_ids)
  rows = [_row(c, x, "query", max_len, 0) for c, x in pairs]
  counts = np.asarray([int(r[2].sum()) for r in rows])
  base = jax.random.key(seed)
  logp = np.zeros(len(rows))
  for s in range(0, len(rows), batch_size):
    chunk = rows[s:s + batch_size]
    width = padded_width(max(len(r[0]) for r in chunk), max_len)
    tok, seg = np.zeros((batch_size, width), np.int32), np.zeros((batch_size, width), np.int32)
    masked = np.zeros((num_samples, batch_size, width), bool)
    t_KxB = np.ones((num_samples, batch_size), np.float32)
    for i, (t, _, scored) in enumerate(chunk):
      key = jax.random.fold_in(base, noise_ids[s + i])
      time_key, mask_key = jax.random.split(key)
      t_KxB[:, i] = np.asarray(mdm.stratified_times(time_key, (num_samples,)))
      n_ctx, n = int(np.argmax(scored)), len(t)
      u_KxN = np.asarray(jax.random.uniform(mask_key, (num_samples, max_len)))[:, :n - n_ctx]
      tok[i, :n], seg[i, :n] = t, 1
      masked[:, i, n_ctx:n] = u_KxN < t_KxB[:, i:i + 1]
    if shift:
      masked[:, :, 0] = False  # nothing predicts a row's first token
    terms_KxB = mdm.elbo_terms(params, config, tok, masked, t_KxB, seg, mask_id=mask_id,
                               shift=shift)
    logp[s:s + len(chunk)] = -terms_KxB.mean(axis=0)[:len(chunk)]
  return logp, counts
