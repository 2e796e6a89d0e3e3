"""Causal sampling of the content stream: the model as the left-to-right LM it was
(an unadapted pretrained model, an `--objective=ar` run, or A3's content head).

The decoding loop (loop.run, stream='content') with a KV cache: the known tokens
before a row's first blank are prefilled, then one position per step, left to
right, each sampled from the content stream's output one position to its left;
known tokens after a blank are committed as given when their turn comes. Blanks
therefore see exactly the tokens to their left (infilling: never the suffix).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta

from a3_jax.config import ModelConfig
from a3_jax.decoding import loop as decode_loop, sampling
from a3_jax.decoding.loop import DecodeResult
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError


def decode_causal(params, config: ModelConfig, tokens_BxT, known_BxT, valid_BxT=None, *,
                  sampler: SamplerConfig = SamplerConfig(), seed: int = 0, row_ids=None,
                  eos_id: int | None = None, pad_id: int = 0) -> DecodeResult:
  """Samples every valid non-known position of tokens [B, T], left to right, from the
  content stream. known, valid: bool [B, T] (valid default: all). Position 0 must be
  known (it has no left context). Returns DecodeResult: groups 0 for known tokens and
  the step that sampled each other position; logprob sums the sampled tokens'.
  """
  tokens = np.asarray(tokens_BxT)
  known = np.asarray(known_BxT, bool)
  valid = np.ones(tokens.shape, bool) if valid_BxT is None else np.asarray(valid_BxT, bool)
  rows = decode_loop.check_tokens(config, tokens, known, row_ids)
  decode_loop.check_special_ids(config, eos_id, pad_id)
  if np.any(valid[:, 0] & ~known[:, 0]):
    raise UserError("causal decoding cannot sample position 0: it has no left context "
                    "(give at least one token before the first blank)")
  blanks = valid & ~known
  first = np.where(blanks.any(axis=1), blanks.argmax(axis=1), tokens.shape[1])
  prefix = known & (np.arange(tokens.shape[1]) < first[:, None])
  return _decode_causal(meta.unbox(params), jnp.asarray(np.where(known, tokens, pad_id), jnp.int32),
                        jnp.asarray(known), jnp.asarray(valid), jnp.int32(seed), rows,
                        sampling.sampler_arrays(sampler),
                        jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id),
                        config=config, num_known=decode_loop.prefill_size(prefix))


@functools.partial(jax.jit, static_argnames=("config", "num_known"))
def _decode_causal(params, tokens_BxT, known_BxT, valid_BxT, seed, row_ids_B, sampler, eos_id,
                   pad_id, *, config, num_known):

  def candidates(groups, done_B):  # the leftmost position not yet committed
    left_BxT = valid_BxT & (groups < 0) & ~done_B[:, None]
    return (jnp.argmax(left_BxT, axis=1)[:, None].astype(jnp.int32),
            jnp.any(left_BxT, axis=1)[:, None])

  def choose(logp_Bx1xV, idx_Bx1, ok_Bx1, step):
    del logp_Bx1xV, step
    return jnp.zeros_like(idx_Bx1), ok_Bx1

  policy = decode_loop.Policy(1, 1, num_known, candidates, choose)
  return decode_loop.run(params, config, tokens_BxT, known_BxT, valid_BxT, seed, row_ids_B,
                         policy, sampler, eos_id, pad_id, form="cached", stream="content")
