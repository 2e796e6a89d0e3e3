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
- `samples`: n samples of one prompt with a chosen decoder (what a3-generate runs).
"""

from a3_jax.decoding.cache import KVCache
from a3_jax.decoding.dynamic import CRITERIA, decode_dynamic
from a3_jax.decoding.group import ORDERS, decode_groups, schedule
from a3_jax.decoding.loop import DecodeResult, sequence_logprob
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.decoding.speculative import SpeculativeResult, decode_speculative

__all__ = ["CRITERIA", "ORDERS", "DecodeResult", "KVCache", "SamplerConfig", "decode_dynamic",
           "decode_groups", "decode_speculative", "schedule", "sequence_logprob",
           "SpeculativeResult"]
