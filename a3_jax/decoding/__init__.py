"""Decoding: the KV-cached loop, group decoding, dynamic resampling, samplers, prompts.

- `cache`: the `KVCache` of committed content keys/values and its updates;
- `loop`: one `lax.while_loop` shared by every decoder (a `Policy` picks what to commit);
- `group`: the paper's Algorithm 1 (groups fixed in advance);
- `dynamic`: Algorithm 2 (each step scores the blanks and commits the best);
- `speculative`: any-subset speculative decoding (exactly the one-at-a-time
  distribution, several tokens per model call);
- `sampling`: temperature / top-k / top-p with per-(seed, row, step, position) keys;
- `prompt`: `<blank:N>` prompts to tokens and decoded rows back to text;
- `blank_length`: the length of a `<blank:MIN-MAX>`, scored for every candidate in one pass;
- `samples`: samples of one prompt with a chosen decoder (what a3-generate runs);
- `causal`: the content stream sampled as the causal LM it is;
- `choices`: the names of the options (no JAX import).

The names below load their module on first use, so `a3_jax.decoding.choices` (and a
console script's --help) does not import JAX.
"""

import importlib

_HOMES = {"KVCache": "cache", "CRITERIA": "choices", "ORDERS": "choices",
          "decode_dynamic": "dynamic", "decode_groups": "group", "schedule": "group",
          "DecodeResult": "loop", "sequence_logprob": "loop", "SamplerConfig": "sampling",
          "decode_speculative": "speculative", "SpeculativeResult": "speculative",
          "decode_causal": "causal"}


def __getattr__(name: str):
  if name not in _HOMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = sorted(_HOMES)
