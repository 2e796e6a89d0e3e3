"""Filling blanks, greedily, with every model kind: the generation side of the tasks.

A request is tokens [B, T] with known [B, T] (given tokens) and valid [B, T]
(False = padding); every valid non-known position is a blank. Methods:

  a3          group decoding (decode.decode_groups): blanks left to right in
              groups of `group_size`, one model call per group
  a3-dynamic  dynamic resampling (decode_dynamic): the `group_size` most
              confident blanks per model call
  ar          the causal baseline (decoding/causal.py, content stream): blanks
              left to right, one call per blank, from the tokens to their left only
  mdm         the masked-diffusion baseline (mdm.generate): confidence-ordered
              unmasking in ceil(blanks / group_size) calls

`fill` returns the tokens and the number of model calls of the longest row, so
methods can be compared at equal numbers of calls.
"""

from __future__ import annotations

import math

import numpy as np
from flax.linen import meta

from a3_jax.config import ModelConfig
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError
from a3_jax.tasks import FILL_METHODS as METHODS

GREEDY = SamplerConfig(temperature=0.0)
WIDTH_MULTIPLE = 16  # widths rounded up to a multiple: few distinct shapes to compile


def round_width(width: int) -> int:
  return -(-width // WIDTH_MULTIPLE) * WIDTH_MULTIPLE


def row_calls(method: str, blanks: int, group_size: int) -> int:
  """Model calls that fill one row of `blanks` blanks alone (in a batch, `ar` may take
  more: it runs every column that holds a blank in any row)."""
  return blanks if method == "ar" else math.ceil(blanks / group_size)


def fill(params, config: ModelConfig, tokens_BxT, known_BxT, valid_BxT=None, *,
         method: str = "a3", group_size: int = 1, eos_id: int | None = None,
         seed: int = 0, mdm_shift: bool = False) -> tuple[np.ndarray, int]:
  """(filled tokens [B, T], model calls of the longest row); see the module docstring.

  eos_id (a3, a3-dynamic): a row stops once it holds EOS with every earlier
  blank filled; later blanks keep the pad token 0. mdm_shift (mdm): the model was
  adapted with the DiffuLLaMA shift (mdm.py).
  """
  if method not in METHODS:
    raise UserError(f"unknown fill method {method!r}; choose one of {METHODS}")
  if group_size < 1:
    raise UserError(f"group_size must be >= 1, got {group_size}")
  tokens = np.asarray(tokens_BxT, np.int32)
  known = np.asarray(known_BxT, bool)
  valid = np.ones(tokens.shape, bool) if valid_BxT is None else np.asarray(valid_BxT, bool)
  blanks = valid & ~known
  most = int(blanks.sum(axis=1).max()) if blanks.size else 0
  if most == 0:
    return tokens, 0
  params = meta.unbox(params)
  if method == "a3":
    from a3_jax.decoding import group as decode
    groups = decode.schedule(known, order="l2r", group_size=group_size, valid_BxT=valid)
    out = decode.decode_groups(params, config, tokens, groups, sampler=GREEDY, seed=seed,
                               eos_id=eos_id)
    return np.asarray(out.tokens), row_calls(method, most, group_size)
  if method == "a3-dynamic":
    from a3_jax.decoding.dynamic import decode_dynamic
    out = decode_dynamic(params, config, tokens, known, valid_BxT=valid,
                         criterion="confidence", commit_per_step=group_size,
                         sampler=GREEDY, seed=seed, eos_id=eos_id)
    return np.asarray(out.tokens), row_calls(method, most, group_size)
  if method == "mdm":
    from a3_jax import mdm
    steps = row_calls(method, most, group_size)
    return mdm.generate(params, config, tokens, known, valid, steps=steps, seed=seed,
                        shift=mdm_shift), steps
  if np.any(blanks[:, 0]):
    raise UserError("the causal baseline cannot fill position 0: it has no left context")
  from a3_jax.decoding.causal import decode_causal
  # Columns after the last blank cannot change the fill: leave them out of every pass.
  end = min(tokens.shape[1], round_width(int(np.flatnonzero(blanks.any(axis=0))[-1]) + 1))
  out = tokens.copy()
  out[:, :end] = decode_causal(params, config, tokens[:, :end], known[:, :end], valid[:, :end],
                               sampler=GREEDY, seed=seed).tokens
  return out, int(blanks.any(axis=0).sum())
