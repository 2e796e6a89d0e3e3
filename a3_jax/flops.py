"""Model FLOPs per trained token and MFU against known accelerator peaks.

Convention (written down once, used by the training log):
  * a multiply-add is 2 FLOPs; training = 3 x forward (backward is twice forward);
  * content stream: every matmul of every layer (Q, K, V, O, MLP); query stream:
    Q, O and MLP (it reuses the content keys/values); LM head on the query stream
    (A3) or the content stream (causal objective);
  * attention: 4 * N * H FLOPs per visible (row, key) pair (scores and values),
    counting only keys the group mask lets the row see, for groups of size k cut
    from T positions: on average (T + k) / 2 keys for content rows and
    (T - k) / 2 for query rows (k = 1 for ar; mixtures average their parts);
  * embeddings lookups, norms, softmax and RoPE are not counted.
Peaks are dense bf16 per device, from the vendors' data sheets.
"""

from __future__ import annotations

import os

import jax

from a3_jax.config import ModelConfig
from a3_jax.grouping import Strategy

PEAK_BF16_FLOPS = {  # device_kind substring -> FLOP/s per device
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
}


def _group_size(strategy: Strategy, seq_len: int) -> float:
  if strategy.kind == "mix":
    total = sum(w for _, w in strategy.parts)
    return sum(w * _group_size(s, seq_len) for s, w in strategy.parts) / total
  return 1.0 if strategy.kind == "ar" else float(min(strategy.k, seq_len))


def flops_per_token(config: ModelConfig, seq_len: int, strategy: Strategy | None,
                    objective: str = "a3") -> float:
  """Training FLOPs per token; `objective='ar'` is the causal content-only baseline."""
  d, n, k, h, f = (config.d_model, config.num_heads, config.num_kv_heads, config.head_dim,
                   config.mlp_dim)
  q_o = 2 * (2 * d * n * h)
  k_v = 2 * (2 * d * k * h)
  mlp = 2 * (3 * d * f)
  head = 2 * d * config.vocab_size
  attn_pair = 4 * n * h
  t = float(seq_len)
  if strategy is not None and strategy.kind == "causal":  # a3's causal-LM stage
    objective = "ar"
  if objective in ("ar", "mdm"):  # one stream; mdm attends to the whole row
    per_layer = q_o + k_v + mlp + attn_pair * (t if objective == "mdm" else (t + 1) / 2)
    return 3.0 * (config.num_layers * per_layer + head)
  g = _group_size(strategy, seq_len) if strategy is not None else 1.0
  content = q_o + k_v + mlp + attn_pair * (t + g) / 2
  query = q_o + mlp + attn_pair * max(t - g, 0.0) / 2
  return 3.0 * (config.num_layers * (content + query) + head)


def device_peak_flops(device=None) -> float | None:
  """Dense bf16 peak of the device, or None where unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
    if name in kind:
      return PEAK_BF16_FLOPS[name]
  return None


def mfu_report(config: ModelConfig, seq_len: int, tokens_per_s: float,
               strategy: Strategy | None, objective: str = "a3") -> dict:
  """{'tflops_per_device': ..., 'mfu': ... (only where the peak is known)}."""
  per_device = flops_per_token(config, seq_len, strategy, objective) * tokens_per_s / jax.device_count()
  out = {"tflops_per_device": per_device / 1e12}
  peak = device_peak_flops()
  if peak:
    out["mfu"] = per_device / peak
  return out


# Model FLOP/s (as counted here) a CPU core sustains on this workload (fp32 XLA, d_model
# 256): an A3-only run of 360 steps of 8 x 256 at the `small` preset ran in 5m41s on a
# quiet 2-core machine where 27e9 predicted 9m40s: ~46 GFLOP/s a core. Causal steps
# reach less of it: the default run (causal stage first) took 10m05s against 8m31s
# predicted.
CPU_FLOPS_PER_CORE = 46e9


def expected_seconds(config: ModelConfig, seq_len: int, tokens: float,
                     strategy: Strategy | None, objective: str = "a3") -> float | None:
  """A rough run time for `tokens` trained tokens: 40 % of the known peak of the
  devices, or CPU_FLOPS_PER_CORE on CPU; None for an accelerator of unknown peak."""
  flops = flops_per_token(config, seq_len, strategy, objective) * tokens
  if jax.default_backend() == "cpu":
    return flops / (CPU_FLOPS_PER_CORE * (os.cpu_count() or 1))
  peak = device_peak_flops()
  return flops / (0.4 * peak * jax.device_count()) if peak else None
