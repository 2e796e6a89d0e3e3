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
  sampler      confidence- (or entropy-) ordered unmasking: every step predicts all
               masked positions and commits the most certain ones, evenly spread
               over `steps` model calls.

Adapting a causal model the DiffuLLaMA way (Gong et al. 2025) adds two things:

  shift        the logits at position i predict x_{i+1} (the causal head's meaning is
               kept); a document's first token has no predictor, so it is never
               masked (every bound is then conditional on it).
  annealing    attention starts causal and is annealed to full over the first
               `anneal_steps` steps. DiffuLLaMA reveals random future (query, key)
               pairs with a growing probability; attention here is described by
               integers (attention/rule.py), not dense masks, so the same path is
               taken with block-causal groups whose width grows linearly from 1
               (causal) to the row length (full), at a random offset per row.
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


def logits(model: A3LM, params, z_BxT, seg_BxT, pos_BxT, mask_id: int = MASK_ID,
           groups_BxT=None, shift: bool = False):
  """fp32 [B, T, V] predictions of every position's token x_i from the noisy tokens z;
  the mask token's logit is -inf.

  groups [B, T] (default all 0: bidirectional within each segment): attention groups,
  a row sees keys of groups <= its own (anneal_groups). shift: x_i is predicted by
  the output at i - 1 (row 0's prediction is meaningless: never score it).
  """
  groups = jnp.zeros_like(seg_BxT) if groups_BxT is None else groups_BxT
  rows = Rows(groups, seg_BxT, pos_BxT)
  h, _, _ = model.apply(params, z_BxT, rows, None, method=A3LM.forward)
  out = model.apply(params, h, method=A3LM.logits)
  if shift:
    out = jnp.concatenate([out[:, :1], out[:, :-1]], axis=1)
  return out.at[..., mask_id].set(-jnp.inf)


def first_of_segment(seg_BxT):
  """bool [B, T]: the first token of each segment (document piece) in its row."""
  seg = jnp.asarray(seg_BxT)
  prev = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  return (seg != prev) & (seg != 0)


def maskable(seg_BxT, shift: bool):
  """bool [B, T]: tokens that may be masked and scored (not padding; with shift, not a
  segment's first token, which nothing predicts)."""
  out = jnp.asarray(seg_BxT) != 0
  return out & ~first_of_segment(seg_BxT) if shift else out


def anneal_groups(step, anneal_steps: int, seg_BxT, pos_BxT, key):
  """int32 [B, T] attention groups at training `step`: block-causal blocks of width
  1 + floor((T - 1) * step / anneal_steps) (width 1 = causal), each row's blocks at
  a random offset; all 0 (full attention) once step >= anneal_steps (or if 0)."""
  pos = jnp.asarray(pos_BxT, jnp.int32)
  if anneal_steps <= 0:
    return jnp.zeros_like(pos)
  b, t = pos.shape
  ratio = jnp.asarray(step, jnp.float32) / anneal_steps
  width = 1 + jnp.floor((t - 1) * jnp.minimum(ratio, 1.0)).astype(jnp.int32)
  offset_Bx1 = jax.random.randint(key, (b, 1), 0, width)
  return jnp.where(ratio >= 1.0, 0, (pos + offset_Bx1) // width).astype(jnp.int32)


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


def loss_stats(model: A3LM, tc, params, batch, key, groups_BxT=None, mask_id: int = MASK_ID):
  """Summed statistics of the MDLM loss of one batch (the dict of loss.grouped_nll).

  batch: tokens, segment_ids, positions [B, T] int32; key: the step's key;
  groups [B, T]: attention groups (anneal_groups; default full attention);
  tc.mdm_shift: the DiffuLLaMA shift (see the module docstring).
  nll: sum over rows of the 1/t-weighted masked NLL; count: maskable tokens, so
  nll / count is the NELBO per token; correct: argmax hits among the masked
  tokens; z: z-loss over the masked tokens.
  """
  tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
  shift = getattr(tc, "mdm_shift", False)
  b, t = tokens.shape
  time_key, mask_key = jax.random.split(key)
  t_B = stratified_times(time_key, (b,))
  may_BxT = maskable(seg, shift)
  masked_BxT = (jax.random.uniform(mask_key, (b, t)) < t_B[:, None]) & may_BxT
  z_BxT = jnp.where(masked_BxT, mask_id, tokens)
  out = logits(model, params, z_BxT, seg, pos, mask_id, groups_BxT, shift)
  nll_B, lse_BxT = _masked_nll(out, tokens, masked_BxT, t_B)
  hit_BxT = masked_BxT & (jnp.argmax(out, axis=-1) == tokens)
  return {"nll": jnp.sum(nll_B),
          "count": jnp.sum(may_BxT).astype(jnp.float32),
          "correct": jnp.sum(hit_BxT).astype(jnp.float32),
          "z": tc.z_loss * jnp.sum(jnp.where(masked_BxT, jnp.square(lse_BxT), 0.0))}


@functools.partial(jax.jit, static_argnames=("config", "shift"))
def _elbo_term(params, tokens_BxT, seg_BxT, pos_BxT, masked_BxT, t_B, mask_id, *, config,
               shift):
  z_BxT = jnp.where(masked_BxT, mask_id, tokens_BxT)
  out = logits(A3LM(config), params, z_BxT, seg_BxT, pos_BxT, mask_id, shift=shift)
  return _masked_nll(out, tokens_BxT, masked_BxT, t_B)[0]


def elbo_terms(params, config: ModelConfig, tokens_BxT, masked_KxBxT, t_KxB, seg_BxT=None,
               pos_BxT=None, mask_id: int = MASK_ID, shift: bool = False) -> np.ndarray:
  """[K, B] single-sample NELBO estimates for given masks and times:
  (1/t) * sum over masked i of -log p(x_i | x with the masked tokens replaced)
  (shift: predicted from position i - 1; a masked row 0 would be meaningless)."""
  tokens = jnp.asarray(tokens_BxT, jnp.int32)
  seg = jnp.ones_like(tokens) if seg_BxT is None else jnp.asarray(seg_BxT, jnp.int32)
  pos = (jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
         if pos_BxT is None else jnp.asarray(pos_BxT, jnp.int32))
  params = meta.unbox(params)
  return np.stack([np.asarray(_elbo_term(params, tokens, seg, pos, jnp.asarray(m, bool),
                                         jnp.asarray(t, jnp.float32), jnp.int32(mask_id),
                                         config=config, shift=shift))
                   for m, t in zip(masked_KxBxT, t_KxB)])


def elbo(params, config: ModelConfig, tokens_BxT, *, num_samples: int, key, seg_BxT=None,
         pos_BxT=None, maskable_BxT=None, mask_id: int = MASK_ID,
         shift: bool = False) -> np.ndarray:
  """[K, B] Monte Carlo samples of the NELBO (an upper bound on -log p(x), in nats).

  Their mean over K is the estimate (its standard error: std / sqrt(K)). Times are
  stratified over the K samples of each row. maskable [B, T] (default: every
  non-padding token): only these may be masked and are scored; the others are
  always seen (a conditional bound: -log p(x_maskable | x_rest)). shift: the model
  was adapted with the DiffuLLaMA shift (segments' first tokens are never masked).
  """
  if num_samples < 1:
    raise UserError(f"num_samples must be >= 1, got {num_samples}")
  _check_mask_id(config, mask_id)
  tokens = np.asarray(tokens_BxT)
  seg = np.ones(tokens.shape, np.int32) if seg_BxT is None else np.asarray(seg_BxT)
  maskable_ = np.array(maskable(seg, shift))
  if maskable_BxT is not None:
    maskable_ &= np.asarray(maskable_BxT, bool)
  if np.any((tokens == mask_id) & maskable_):
    raise UserError(f"the text holds the mask token id {mask_id}; the ELBO needs a mask id "
                     "that never occurs in the data")
  b, t = tokens.shape
  time_key, mask_key = jax.random.split(key)
  t_KxB = np.asarray(stratified_times(time_key, (num_samples, b)))
  u_KxBxT = np.asarray(jax.random.uniform(mask_key, (num_samples, b, t)))
  masked_KxBxT = (u_KxBxT < t_KxB[..., None]) & maskable_
  return elbo_terms(params, config, tokens, masked_KxBxT, t_KxB, seg, pos_BxT, mask_id, shift)


def nelbo_texts(params, config: ModelConfig, texts: Sequence[Sequence[int]], *,
                num_samples: int = 16, window: int | None = None, context: int = 0,
                seed: int = 0, mask_id: int = MASK_ID, shift: bool = False,
                progress=None) -> dict:
  """NELBO per token of token-id texts (windows as in evaluate.score_texts: the
  context tokens of a window are always seen, never scored; with shift, a text's
  first token neither). `progress(done, total)` hears every window."""
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
    scored = (np.arange(width) >= n_ctx)[None] & np.asarray(maskable(seg, shift))
    samples.append(elbo(params, config, tok, num_samples=num_samples, seg_BxT=seg,
                        maskable_BxT=scored, key=jax.random.fold_in(key, i),
                        mask_id=mask_id, shift=shift)[:, 0])
    tokens += int(scored.sum())
    if progress is not None:
      progress(i + 1, len(pieces))
  total_K = np.sum(samples, axis=0)  # one estimate of the whole bound per sample
  nelbo = float(np.mean(total_K)) / tokens
  return {"grouping": "mdm-elbo", "head": "mdm", "tokens": tokens, "samples": num_samples,
          "nelbo_per_token": nelbo, "perplexity_bound": math.exp(nelbo),
          "stderr_per_token": float(np.std(total_K) / math.sqrt(num_samples)) / tokens}


CRITERIA = ("confidence", "entropy")


@functools.partial(jax.jit, static_argnames=("config", "shift"))
def _generate(params, tokens_BxT, open_BxT, seg_BxT, seed, sampler, mask_id, steps, criterion,
              *, config, shift):
  model = A3LM(config)
  b, t = tokens_BxT.shape
  pos_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  rows_B = jnp.arange(b, dtype=jnp.int32)

  def body(s, carry):
    z_BxT, open_BxT = carry
    out = logits(model, params, z_BxT, seg_BxT, pos_BxT, mask_id, shift=shift)
    keys = sampling.position_keys(seed, rows_B, s, pos_BxT, sampling.SAMPLE_STREAM)
    tok_BxT = sampling.sample(out, keys, sampler)
    p_BxTxV = jax.nn.softmax(out, axis=-1)
    conf_BxT = jnp.take_along_axis(p_BxTxV, tok_BxT[..., None], -1)[..., 0]
    neg_entropy_BxT = jnp.sum(jnp.where(p_BxTxV > 0, p_BxTxV * jnp.log(p_BxTxV), 0.0), -1)
    certainty_BxT = jnp.where(criterion == 0, conf_BxT, neg_entropy_BxT)
    # Commit ceil(open / steps left) positions, the most certain first (ties: leftmost).
    n_B = -(-jnp.sum(open_BxT, axis=1) // (steps - s))
    score_BxT = jnp.where(open_BxT, certainty_BxT, -jnp.inf)
    rank_BxT = jnp.argsort(jnp.argsort(-score_BxT, axis=1, stable=True), axis=1)
    commit_BxT = open_BxT & (rank_BxT < n_B[:, None])
    return jnp.where(commit_BxT, tok_BxT, z_BxT), open_BxT & ~commit_BxT

  z_BxT = jnp.where(open_BxT, mask_id, tokens_BxT)
  z_BxT, _ = jax.lax.fori_loop(0, steps, body, (z_BxT, open_BxT))
  return z_BxT


def generate(params, config: ModelConfig, tokens_BxT, known_BxT, valid_BxT=None, *,
             steps: int, sampler: SamplerConfig = SamplerConfig(temperature=0.0),
             seed: int = 0, mask_id: int = MASK_ID, criterion: str = "confidence",
             shift: bool = False) -> np.ndarray:
  """Fills every valid non-known position of tokens [B, T] in `steps` model calls
  (unmasking the most certain first: `criterion` confidence = the sampled token's
  probability, entropy = lowest entropy; temperature 0 = greedy). shift: the model
  predicts x_i from position i - 1, so a row's first token must be known.
  Returns tokens [B, T]."""
  if steps < 1:
    raise UserError(f"steps must be >= 1, got {steps}")
  if criterion not in CRITERIA:
    raise UserError(f"unknown unmasking criterion {criterion!r}; choose one of {CRITERIA}")
  _check_mask_id(config, mask_id)
  tokens = np.asarray(tokens_BxT, np.int32)
  known = np.asarray(known_BxT, bool)
  valid = np.ones(tokens.shape, bool) if valid_BxT is None else np.asarray(valid_BxT, bool)
  if known.shape != tokens.shape or valid.shape != tokens.shape:
    raise UserError(f"known {known.shape} and valid {valid.shape} masks must have the "
                     f"token shape {tokens.shape}")
  if shift and np.any(valid[:, 0] & ~known[:, 0]):
    raise UserError("a model adapted with the shift predicts x_i from position i - 1: "
                     "a row's first token must be given")
  return np.asarray(_generate(meta.unbox(params), jnp.asarray(tokens), jnp.asarray(valid & ~known),
                              jnp.asarray(valid, jnp.int32), jnp.int32(seed),
                              sampling.sampler_arrays(sampler), jnp.int32(mask_id),
                              jnp.int32(steps), jnp.int32(CRITERIA.index(criterion)),
                              config=config, shift=shift))
