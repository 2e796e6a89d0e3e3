"""Samples of one prompt with a chosen decoder (what a3-generate runs)."""

from __future__ import annotations

import numpy as np

from a3_jax.decoding import causal, dynamic, group, speculative
from a3_jax.decoding.sampling import SamplerConfig


def decode_prompt(params, config, tokens_T, known_T, *, num_samples: int = 1,
                  decoder: str = "group", sampler: SamplerConfig = SamplerConfig(),
                  seed: int = 0, eos_id: int | None = None, pad_id: int = 0,
                  form: str = "cached", order: str = "l2r", group_size: int = 1,
                  criterion: str = "confidence", commit_per_step: int = 1,
                  threshold: float = 0.9, block_size: int = 0, draft_size: int = 4):
  """`num_samples` rows of one prompt (tokens_T [T], known_T [T] bool) decoded by
  `decoder`: 'group' (groups of `group_size` in `order`) or 'dynamic' (`criterion`,
  `commit_per_step`, `threshold`, `block_size`) or 'speculative' (one token at a time in
  `order`, `draft_size` drafted per call; no `form`) or 'causal' (the content stream as a
  causal LM, left to right; no `form`). Returns the decoder's result."""
  tokens = np.broadcast_to(tokens_T, (num_samples, len(tokens_T)))
  known = np.broadcast_to(known_T, tokens.shape)
  common = dict(sampler=sampler, seed=seed, eos_id=eos_id, pad_id=pad_id, form=form)
  if decoder == "causal":
    del common["form"]
    return causal.decode_causal(params, config, tokens, known, **common)
  if decoder == "speculative":
    order_ids = group.schedule(known, order=order, group_size=1, seed=seed)
    del common["form"]
    return speculative.decode_speculative(params, config, tokens, order_ids,
                                          draft_size=draft_size, **common)
  if decoder == "group":
    groups = group.schedule(known, order=order, group_size=group_size, seed=seed)
    return group.decode_groups(params, config, tokens, groups, **common)
  if decoder != "dynamic":
    raise ValueError(f"unknown decoder {decoder!r}")
  return dynamic.decode_dynamic(params, config, tokens, known, criterion=criterion,
                                commit_per_step=commit_per_step, threshold=threshold,
                                block_size=block_size, **common)
