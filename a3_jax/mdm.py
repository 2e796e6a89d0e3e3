"""MDLM-style masked diffusion on the A3 backbone: the diffusion baseline.

One bidirectional stream: the content stream with every position of a document
in group 0, so each token sees its whole document (segment ids still separate
packed documents; padding is never visible). The logits at position i predict
x_i itself (no shift) from the partly masked sequence.

  mask token   one vocabulary id (MASK_ID = 0: the embedded tokenizer's pad id,
               which never occurs inside a document); the model never predicts it
               (its logit is -inf: MDLM's SUBS parameterisation), and unmasked
               tokens are never scored (carry-over).
  schedule     log-linear: alpha_t = 1 - t, so at time t each token is masked
               independently with probability t.
  loss         the continuous-time ELBO (MDLM eq. 10 for this schedule):
                 -log p(x) <= E_{t~U(0,1)} E_{z_t} [ (1/t) sum_{i masked} -log p(x_i | z_t) ]
               with t drawn in [T_EPS, 1], stratified over the rows of a batch
               (or the samples of an estimate) for lower variance.
  sampler      confidence-ordered unmasking: every step predicts all masked
               positions and commits the most confident ones, evenly spread
               over `steps` model calls.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta

from a3_jax.decoding import sampling
from a3_jax.config import ModelConfig
from a3_jax.evaluate import text_windows
from a3_jax.model import A3LM, Rows
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError

MASK_ID = 0
T_EPS = 1e-3


def logits(model: A3LM, params, z_BxT, seg_BxT, pos_BxT, mask_id: int = MASK_ID):
  """fp32 [B, T, V] predictions of every position from the noisy tokens z, bidirectional
  within each segment; the mask token's logit is -inf."""
  rows = Rows(jnp.zeros_like(seg_BxT), seg_BxT, pos_BxT)
  h, _, _ = model.apply(params, z_BxT, rows, None, method=A3LM.forward)
  out = model.apply(params, h, method=A3LM.logits)
  return out.at[..., mask_id].set(-jnp.inf)


def stratified_times(key, shape, eps: float = T_EPS):
  """Times in [eps, 1] of shape (n, ...): one uniform draw u, then (u + i/n) mod 1
  along the first axis: each n consecutive draws cover [0, 1) evenly."""
  n = shape[0]
  u = jax.random.uniform(key, shape[1:])
  offsets = (jnp.arange(n, dtype=jnp.float32) / n).reshape((n,) + (1,) * (len(shape) - 1))
  return eps + (1.0 - eps) * jnp.mod(u + offsets, 1.0)


def _masked_nll(logits_BxTxV, tokens_BxT, masked_BxT, t_B):
  """Per row sum of (1/t) * -log p(x_i | z_t) over masked i, and the per-token pieces."""
  lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_BxT = jnp.take_along_axis(logits_BxTxV, tokens_BxT[..., None], axis=-1)[..., 0]
  nll_BxT = jnp.where(masked_BxT, lse_BxT - target_BxT, 0.0)
  return jnp.sum(nll_BxT, axis=1) / t_B, lse_BxT


def _check_mask_id(config: ModelConfig, mask_id: int) -> None:
  if not 0 <= mask_id < config.vocab_size:
    raise UserError(f"mask id {mask_id} is outside the vocabulary [0, {config.vocab_size})")


def loss_stats(model: A3LM, tc, params, batch, key, mask_id: int = MASK_ID):
  """Summed statistics of the MDLM loss of one batch (the dict of loss.grouped_nll).

  batch: tokens, segment_ids, positions [B, T] int32; key: the step's key.
  nll: sum over rows of the 1/t-weighted masked NLL; count: real (non-padding)
  tokens, so nll / count is the NELBO per token; correct: argmax hits among the
  masked tokens; z: z-loss over the masked tokens.
  """
  tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
  b, t = tokens.shape
  time_key, mask_key = jax.random.split(key)
  t_B = stratified_times(time_key, (b,))
  masked_BxT = (jax.random.uniform(mask_key, (b, t)) < t_B[:, None]) & (seg != 0)
  z_BxT = jnp.where(masked_BxT, mask_id, tokens)
  out = logits(model, params, z_BxT, seg, pos, mask_id)
  nll_B, lse_BxT = _masked_nll(out, tokens, masked_BxT, t_B)
  hit_BxT = masked_BxT & (jnp.argmax(out, axis=-1) == tokens)
  return {"nll": jnp.sum(nll_B),
          "count": jnp.sum(seg != 0).astype(jnp.float32),
          "correct": jnp.sum(hit_BxT).astype(jnp.float32),
          "z": tc.z_loss * jnp.sum(jnp.where(masked_BxT, jnp.square(lse_BxT), 0.0))}


@functools.partial(jax.jit, static_argnames=("config",))
def _elbo_term(params, tokens_BxT, seg_BxT, pos_BxT, masked_BxT, t_B, mask_id, *, config):
  z_BxT = jnp.where(masked_BxT, mask_id, tokens_BxT)
  out = logits(A3LM(config), params, z_BxT, seg_BxT, pos_BxT, mask_id)
  return _masked_nll(out, tokens_BxT, masked_BxT, t_B)[0]


def elbo_terms(params, config: ModelConfig, tokens_BxT, masked_KxBxT, t_KxB, seg_BxT=None,
               pos_BxT=None, mask_id: int = MASK_ID) -> np.ndarray:
  """[K, B] single-sample NELBO estimates for given masks and times:
  (1/t) * sum over masked i of -log p(x_i | x with the masked tokens replaced)."""
  tokens = jnp.asarray(tokens_BxT, jnp.int32)
  seg = jnp.ones_like(tokens) if seg_BxT is None else jnp.asarray(seg_BxT, jnp.int32)
  pos = (jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
         if pos_BxT is None else jnp.asarray(pos_BxT, jnp.int32))
  params = meta.unbox(params)
  return np.stack([np.asarray(_elbo_term(params, tokens, seg, pos, jnp.asarray(m, bool),
                                         jnp.asarray(t, jnp.float32), jnp.int32(mask_id),
                                         config=config))
                   for m, t in zip(masked_KxBxT, t_KxB)])


def elbo(params, config: ModelConfig, tokens_BxT, *, num_samples: int, key, seg_BxT=None,
         pos_BxT=None, maskable_BxT=None, mask_id: int = MASK_ID) -> np.ndarray:
  """[K, B] Monte Carlo samples of the NELBO (an upper bound on -log p(x), in nats).

  Their mean over K is the estimate (its standard error: std / sqrt(K)). Times are
  stratified over the K samples of each row. maskable [B, T] (default: every
  non-padding token): only these may be masked and are scored; the others are
  always seen (a conditional bound: -log p(x_maskable | x_rest)).
  """
  if num_samples < 1:
    raise UserError(f"num_samples must be >= 1, got {num_samples}")
  _check_mask_id(config, mask_id)
  tokens = np.asarray(tokens_BxT)
  seg = np.ones(tokens.shape, np.int32) if seg_BxT is None else np.asarray(seg_BxT)
  maskable = (seg != 0) if maskable_BxT is None else (np.asarray(maskable_BxT, bool) & (seg != 0))
  if np.any((tokens == mask_id) & maskable):
    raise UserError(f"the text holds the mask token id {mask_id}; the ELBO needs a mask id "
                     "that never occurs in the data")
  b, t = tokens.shape
  time_key, mask_key = jax.random.split(key)
  t_KxB = np.asarray(stratified_times(time_key, (num_samples, b)))
  u_KxBxT = np.asarray(jax.random.uniform(mask_key, (num_samples, b, t)))
  masked_KxBxT = (u_KxBxT < t_KxB[..., None]) & maskable
  return elbo_terms(params, config, tokens, masked_KxBxT, t_KxB, seg, pos_BxT, mask_id)


def nelbo_texts(params, config: ModelConfig, texts: Sequence[Sequence[int]], *,
                num_samples: int = 16, window: int | None = None, context: int = 0,
                seed: int = 0, mask_id: int = MASK_ID) -> dict:
  """NELBO per token of token-id texts (windows as in evaluate.score_texts: the
  context tokens of a window are always seen, never scored)."""
  window = min(window or config.max_seq_len, config.max_seq_len)
  pieces = []
  for ids in texts:
    ids = np.asarray(ids, np.int32)
    if len(ids) < 1:
      raise UserError("a text has no tokens")
    pieces += [(ids[a:b], c) for a, b, c in text_windows(len(ids), window, context)]
  width = max(len(p) for p, _ in pieces)
  samples, tokens = [], 0
  key = jax.random.key(seed)
  for i, (piece, n_ctx) in enumerate(pieces):
    tok, seg = np.zeros((1, width), np.int32), np.zeros((1, width), np.int32)
    tok[0, :len(piece)], seg[0, :len(piece)] = piece, 1
    maskable = (np.arange(width) >= n_ctx)[None] & (seg != 0)
    samples.append(elbo(params, config, tok, num_samples=num_samples, seg_BxT=seg,
                        maskable_BxT=maskable, key=jax.random.fold_in(key, i),
                        mask_id=mask_id)[:, 0])
    tokens += int(maskable.sum())
  total_K = np.sum(samples, axis=0)  # one estimate of the whole bound per sample
  nelbo = float(np.mean(total_K)) / tokens
  return {"grouping": "mdm-elbo", "head": "mdm", "tokens": tokens, "samples": num_samples,
          "nelbo_per_token": nelbo, "perplexity_bound": math.exp(nelbo),
          "stderr_per_token": float(np.std(total_K) / math.sqrt(num_samples)) / tokens}


@functools.partial(jax.jit, static_argnames=("config",))
def _generate(params, tokens_BxT, open_BxT, seg_BxT, seed, sampler, mask_id, steps, *, config):
  model = A3LM(config)
  b, t = tokens_BxT.shape
  pos_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  rows_B = jnp.arange(b, dtype=jnp.int32)

  def body(s, carry):
    z_BxT, open_BxT = carry
    out = logits(model, params, z_BxT, seg_BxT, pos_BxT, mask_id)
    keys = sampling.position_keys(seed, rows_B, s, pos_BxT, sampling.SAMPLE_STREAM)
    tok_BxT = sampling.sample(out, keys, sampler)
    conf_BxT = jnp.take_along_axis(jax.nn.softmax(out, axis=-1), tok_BxT[..., None], -1)[..., 0]
    # Commit ceil(open / steps left) positions, the most confident first (ties: leftmost).
    n_B = -(-jnp.sum(open_BxT, axis=1) // (steps - s))
    score_BxT = jnp.where(open_BxT, conf_BxT, -jnp.inf)
    rank_BxT = jnp.argsort(jnp.argsort(-score_BxT, axis=1, stable=True), axis=1)
    commit_BxT = open_BxT & (rank_BxT < n_B[:, None])
    return jnp.where(commit_BxT, tok_BxT, z_BxT), open_BxT & ~commit_BxT

  z_BxT = jnp.where(open_BxT, mask_id, tokens_BxT)
  z_BxT, _ = jax.lax.fori_loop(0, steps, body, (z_BxT, open_BxT))
  return z_BxT


def generate(params, config: ModelConfig, tokens_BxT, known_BxT, valid_BxT=None, *,
             steps: int, sampler: SamplerConfig = SamplerConfig(temperature=0.0),
             seed: int = 0, mask_id: int = MASK_ID) -> np.ndarray:
  """Fills every valid non-known position of tokens [B, T] in `steps` model calls
  (confidence-ordered unmasking; temperature 0 = greedy). Returns tokens [B, T]."""
  if steps < 1:
    raise UserError(f"steps must be >= 1, got {steps}")
  _check_mask_id(config, mask_id)
  tokens = np.asarray(tokens_BxT, np.int32)
  known = np.asarray(known_BxT, bool)
  valid = np.ones(tokens.shape, bool) if valid_BxT is None else np.asarray(valid_BxT, bool)
  if known.shape != tokens.shape or valid.shape != tokens.shape:
    raise UserError(f"known {known.shape} and valid {valid.shape} masks must have the "
                     f"token shape {tokens.shape}")
  return np.asarray(_generate(meta.unbox(params), jnp.asarray(tokens), jnp.asarray(valid & ~known),
                              jnp.asarray(valid, jnp.int32), jnp.int32(seed),
                              sampling.sampler_arrays(sampler), jnp.int32(mask_id),
                              jnp.int32(steps), config=config))
