"""A llama.cpp GGUF file (architecture `llama`) as a source of HF-named tensor slices.

The `gguf` package memory-maps the file; `read` dequantizes only the requested
rows (quantization blocks run along rows, so any row range dequantizes on its own)
and undoes llama.cpp's Q/K row permutation: its converter interleaves the two
RoPE halves of every head (row j*H/2 + i of a head becomes row 2i + j), which is
local to each head, so whole-head row ranges unpermute independently.

llama3 RoPE scaling is stored by llama.cpp as a `rope_freqs` tensor of per-frequency
divisors; we recover the RopeScaling that produces them and refuse files whose
divisors no llama3 scaling reproduces.

The tokenizer is rebuilt from the GGUF metadata with the `tokenizers` library
(convert/gguf_tokenizer.py) and kept as a tokenizer.json.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import gguf
import numpy as np

from a3_jax.config import ModelConfig, RopeScaling
from a3_jax.convert import gguf_tokenizer, hf_params
from a3_jax.tokenizer import JsonTokenizer
from a3_jax.errors import UserError

_LAYER_NAMES = {  # HF suffix under model.layers.{i}. -> GGUF suffix under blk.{i}.
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_PERMUTED = ("attn_q.weight", "attn_k.weight")


class GGUFFile:
  """Tensors (under HF names), config and tokenizer of a LLaMA GGUF file."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise UserError(f"GGUF file {path} does not exist")
    self.path = path
    try:
      self._reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct errors on non-GGUF bytes
      raise UserError(f"{path} is not a readable GGUF file: {e}") from None
    self._meta = {k: f.contents() for k, f in self._reader.fields.items()
                  if not k.startswith("tokenizer.ggml.")}
    self._tensors = {t.name: t for t in self._reader.tensors}
    arch = self._meta.get("general.architecture")
    if arch != "llama":
      raise UserError(f"unsupported GGUF architecture {arch!r}; supported: 'llama' "
                       "(LLaMA 2, 3, 3.1, 3.2, SmolLM2)")
    self.hf_config = self._hf_config()
    layers = self.hf_config["num_hidden_layers"]
    self._names = {"model.embed_tokens.weight": "token_embd.weight",
                   "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    for i in range(layers):
      for hf, ours in _LAYER_NAMES.items():
        self._names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{ours}"

  def _get(self, key: str, default: Any = None) -> Any:
    return self._meta.get(f"llama.{key}", default)

  def _hf_config(self) -> dict[str, Any]:
    """The LlamaConfig dict this file describes (llama.cpp metadata keys)."""
    required = ("embedding_length", "block_count", "attention.head_count", "feed_forward_length")
    missing = [f"llama.{k}" for k in required if self._get(k) is None]
    if missing:
      raise UserError(f"GGUF file {self.path} lacks metadata {missing}")
    d, heads = int(self._get("embedding_length")), int(self._get("attention.head_count"))
    if heads < 1 or d < 1:
      raise UserError(f"GGUF file {self.path}: llama.attention.head_count ({heads}) and "
                      f"llama.embedding_length ({d}) must be >= 1")
    head_dim = int(self._get("attention.key_length", d // heads))
    if int(self._get("rope.dimension_count", head_dim)) != head_dim:
      raise UserError("unsupported GGUF: partial rotary embeddings "
                       f"(rope.dimension_count {self._get('rope.dimension_count')} != head_dim {head_dim})")
    if self._get("rope.scaling.type") not in (None, "none"):
      raise UserError(f"unsupported RoPE scaling type {self._get('rope.scaling.type')!r} "
                       "(supported: llama3, stored as rope_freqs)")
    vocab = self._get("vocab_size")
    if vocab is None and "token_embd.weight" in self._tensors:
      vocab = int(self._tensors["token_embd.weight"].shape[-1])
    theta = float(self._get("rope.freq_base", 10000.0))
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "vocab_size": vocab, "hidden_size": d,
          "num_hidden_layers": int(self._get("block_count")),
          "num_attention_heads": heads,
          "num_key_value_heads": int(self._get("attention.head_count_kv", heads)),
          "head_dim": head_dim,
          "intermediate_size": int(self._get("feed_forward_length")),
          "max_position_embeddings": int(self._get("context_length", 2048)),
          "rms_norm_eps": float(self._get("attention.layer_norm_rms_epsilon", 1e-6)),
          "rope_theta": theta,
          "tie_word_embeddings": "output.weight" not in self._tensors}
    if "rope_freqs.weight" in self._tensors:
      factors = gguf.quants.dequantize(self._tensors["rope_freqs.weight"].data,
                                       self._tensors["rope_freqs.weight"].tensor_type)
      scaling = llama3_scaling_from_factors(
          np.asarray(factors, np.float64).reshape(-1), theta, head_dim,
          int(self._get("rope.scaling.original_context_length", 8192)))
      if scaling is not None:
        hf["rope_scaling"] = {"rope_type": "llama3", "factor": scaling.factor,
                              "low_freq_factor": scaling.low_freq_factor,
                              "high_freq_factor": scaling.high_freq_factor,
                              "original_max_position_embeddings": scaling.original_max_position}
    return hf

  def shape(self, name: str) -> tuple[int, ...] | None:
    t = self._tensors.get(self._names.get(name, ""))
    return None if t is None else tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first

  def read(self, name: str, index: hf_params.Index) -> np.ndarray:
    gguf_name = self._names[name]
    t = self._tensors[gguf_name]
    w = gguf.quants.dequantize(t.data[index[0]], t.tensor_type)
    if gguf_name.endswith(_PERMUTED):  # whole heads: rows [n*H, (n+1)*H) each
      h, cols = self.hf_config["head_dim"], w.shape[-1]
      w = w.reshape(-1, h // 2, 2, cols).swapaxes(1, 2).reshape(-1, cols)
    return w[(slice(None),) + tuple(index[1:])]

  def tokenizer(self) -> JsonTokenizer:
    prefix = "tokenizer.ggml."
    fields = {k[len(prefix):]: f.contents() for k, f in self._reader.fields.items()
              if k.startswith(prefix)}
    tok, ids = gguf_tokenizer.build(fields)
    return JsonTokenizer(tok, ids["bos"], ids["eos"], ids["pad"],
                         chat_template=self._meta.get("tokenizer.chat_template"))


def _factors(scaling: RopeScaling, theta: float, head_dim: int) -> np.ndarray:
  """Per-frequency divisors (unscaled / scaled inverse frequency) of our RoPE."""
  from a3_jax.layers import rope_inv_freq  # the model's own formula, not a copy
  base = ModelConfig(vocab_size=1, d_model=head_dim, num_layers=1, num_heads=1, num_kv_heads=1,
                     head_dim=head_dim, mlp_dim=1, rope_theta=theta)
  scaled = base.replace(rope_scaling=scaling)
  return np.asarray(rope_inv_freq(base), np.float64) / np.asarray(rope_inv_freq(scaled), np.float64)


def llama3_scaling_from_factors(factors: np.ndarray, theta: float, head_dim: int,
                                original_max_position: int) -> RopeScaling | None:
  """The llama3 RopeScaling whose divisors equal llama.cpp's `rope_freqs`, or None if all are 1.

  The divisors depend only on (factor, orig/low, orig/high), so low_freq_factor is
  fixed to 1: factor is the largest divisor, and the frequencies between the two
  cut-offs give orig and high by a line fit. With fewer than two such frequencies
  the standard (low 1, high 4, `original_max_position`) is tried.
  """
  if factors.shape != (head_dim // 2,):
    raise UserError(f"GGUF rope_freqs has shape {factors.shape}, expected ({head_dim // 2},)")
  if np.allclose(factors, 1.0):
    return None
  factor = float(factors.max())
  wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
  medium = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
  candidates = [RopeScaling(factor, 1.0, 4.0, original_max_position)]
  if medium.sum() >= 2:
    smooth = (1 / factors[medium] - 1 / factor) / (1 - 1 / factor)  # = a / wavelen - b
    a, minus_b = np.polyfit(1 / wavelen[medium], smooth, 1)
    with contextlib.suppress(UserError, ValueError, OverflowError):  # no llama3 fit
      candidates.insert(0, RopeScaling(factor, 1.0, round(float(1 - 1 / minus_b), 6),
                                       int(round(-a / minus_b))))
  for scaling in candidates:
    if np.allclose(_factors(scaling, theta, head_dim), factors, rtol=1e-4):
      return scaling
  raise UserError("GGUF rope_freqs are not a llama3 RoPE scaling (unsupported scaling)")
