"""Conditional generation quality (the paper's Table 2): continue prompts at equal
numbers of model calls, judge the samples' perplexity with a causal model.

Methods (each fills `new_tokens` positions after a prompt in `calls` model calls):
  a3          A3 group decoding, left to right, new_tokens / calls per group
  a3-dynamic  A3 dynamic decoding: the new_tokens / calls most certain per call
              (`criterion` confidence or entropy)
  mdm         masked-diffusion unmasking, the most certain first (same criteria)

The judge is a causal LM's log p(continuation | prompt) (content head). A sample
that repeats one token is likely under most judges, so each sample's unigram
token entropy is reported with the perplexity (as MDLM-style evaluations do).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from a3_jax.config import ModelConfig
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError
from a3_jax.tasks import scoring

METHODS = ("a3", "a3-dynamic", "mdm")


def prompts_from_texts(texts: Sequence[Sequence[int]], n: int, length: int, reserve: int, *,
                       seed: int = 0) -> np.ndarray:
  """int32 [n, length]: prompts cut at random places of token-id texts (evenly over
  the texts), each followed in its text by at least `reserve` more tokens."""
  rng = np.random.default_rng(seed)
  usable = [t for t in texts if len(t) >= length + reserve]
  if not usable:
    raise UserError(f"no text holds {length + reserve} tokens for a prompt")
  out = []
  for i in range(n):
    ids = np.asarray(usable[i % len(usable)])
    start = int(rng.integers(0, len(ids) - length - reserve + 1))
    out.append(ids[start:start + length])
  return np.stack(out).astype(np.int32)


def generate(params, config: ModelConfig, prompts_NxP, new_tokens: int, *, method: str,
             calls: int, criterion: str = "confidence",
             sampler: SamplerConfig = SamplerConfig(), seed: int = 0,
             mdm_shift: bool = False) -> np.ndarray:
  """int32 [N, new_tokens]: continuations of the prompts (see the module docstring)."""
  if method not in METHODS:
    raise UserError(f"unknown continuation method {method!r}; choose one of {METHODS}")
  if calls < 1 or new_tokens % calls:
    raise UserError(f"calls ({calls}) must divide new_tokens ({new_tokens})")
  prompts = np.asarray(prompts_NxP, np.int32)
  n, p = prompts.shape
  tokens = np.zeros((n, p + new_tokens), np.int32)
  tokens[:, :p] = prompts
  known = np.zeros(tokens.shape, bool)
  known[:, :p] = True
  per_call = new_tokens // calls
  if method == "a3":
    from a3_jax.decoding import group
    groups = group.schedule(known, order="l2r", group_size=per_call)
    out = group.decode_groups(params, config, tokens, groups, sampler=sampler, seed=seed).tokens
  elif method == "a3-dynamic":
    from a3_jax.decoding.dynamic import decode_dynamic
    out = decode_dynamic(params, config, tokens, known, criterion=criterion,
                         commit_per_step=per_call, sampler=sampler, seed=seed).tokens
  else:
    from a3_jax import mdm
    out = mdm.generate(params, config, tokens, known, steps=calls, sampler=sampler, seed=seed,
                       criterion=criterion, shift=mdm_shift)
  return np.asarray(out)[:, p:]


def unigram_entropy(tokens_T) -> float:
  """Entropy (nats) of the token frequencies of one sample."""
  _, counts = np.unique(np.asarray(tokens_T), return_counts=True)
  freq = counts / counts.sum()
  return float(-(freq * np.log(freq)).sum())


def judge(params, config: ModelConfig, prompts_NxP, samples_NxS, *,
          batch_size: int = 8) -> dict:
  """The causal judge's perplexity of the samples given their prompts (exp of the mean
  NLL per sample token over all samples) and the samples' mean unigram entropy."""
  pairs = [(list(p), list(s)) for p, s in zip(np.asarray(prompts_NxP), np.asarray(samples_NxS))]
  logp, counts = scoring.loglikelihoods(params, config, pairs, head="content",
                                        batch_size=batch_size)
  nll = float(-logp.sum() / counts.sum())
  return {"perplexity": math.exp(nll), "nll_per_token": nll,
          "entropy": float(np.mean([unigram_entropy(s) for s in np.asarray(samples_NxS)])),
          "samples": len(pairs)}
