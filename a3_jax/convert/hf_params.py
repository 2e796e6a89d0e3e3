"""Mapping between Hugging Face LLaMA tensor names/layouts and a3_jax params.

HF stores linear weights as [out, in]; we store q_proj [D, N, H], k/v_proj
[D, K, H], o_proj [N, H, D], gate/up [D, F], down [F, D], layers stacked on a
leading [L] axis. The query-stream start vector travels as `model.query_embed`
(shape [1, 1, D], as in the authors' code). Pure numpy: no torch needed here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from a3_jax.config import ModelConfig, RopeScaling

QUERY_EMBED_NAME = "model.query_embed"

_LAYER_NAMES = {  # ours -> HF suffix under model.layers.{i}.
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
    ("attn", "q_proj"): "self_attn.q_proj.weight",
    ("attn", "k_proj"): "self_attn.k_proj.weight",
    ("attn", "v_proj"): "self_attn.v_proj.weight",
    ("attn", "o_proj"): "self_attn.o_proj.weight",
    ("mlp", "gate_proj"): "mlp.gate_proj.weight",
    ("mlp", "up_proj"): "mlp.up_proj.weight",
    ("mlp", "down_proj"): "mlp.down_proj.weight",
}


def config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """ModelConfig from a transformers LlamaConfig dict (4.x or 5.x keys)."""
  rope = dict(hf.get("rope_parameters") or {})  # transformers 5.x
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type") not in (None, "default") else None)
  rope_scaling = None
  if scaling:
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ("llama3", "default"):
      raise ValueError(f"unsupported RoPE scaling type {kind!r} (supported: llama3)")
    if kind == "llama3":
      rope_scaling = RopeScaling(
          factor=float(scaling["factor"]),
          low_freq_factor=float(scaling["low_freq_factor"]),
          high_freq_factor=float(scaling["high_freq_factor"]),
          original_max_position=int(scaling["original_max_position_embeddings"]))
  heads = hf["num_attention_heads"]
  fields = dict(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"],
      max_seq_len=hf.get("max_position_embeddings", 2048),
      rope_theta=float(theta), rope_scaling=rope_scaling,
      rms_eps=float(hf.get("rms_norm_eps", 1e-5)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
  fields.update(overrides)
  return ModelConfig(**fields)


def params_from_hf(state: Mapping[str, np.ndarray], config: ModelConfig,
                   query_embed: np.ndarray | None = None) -> dict[str, Any]:
  """Unboxed a3_jax params (numpy, param_dtype) from an HF LLaMA state dict.

  `query_embed` [D] overrides (or supplies) the query-stream start vector; if the
  state has none and none is given, it is drawn N(0, query_init_scale^2) with seed 0.
  """
  c = config
  dt = np.dtype(c.param_dtype) if c.param_dtype != "bfloat16" else np.float32

  def get(name):
    if name not in state:
      raise ValueError(f"checkpoint is missing tensor {name!r}")
    return np.asarray(state[name], dtype=np.float32)

  def expect(name, arr, shape):
    if arr.shape != tuple(shape):
      raise ValueError(f"tensor {name!r} has shape {arr.shape}, config expects {tuple(shape)}")
    return arr

  d, n, k, h, f = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
  hf_shapes = {"q_proj": (n * h, d), "k_proj": (k * h, d), "v_proj": (k * h, d),
               "o_proj": (d, n * h), "gate_proj": (f, d), "up_proj": (f, d),
               "down_proj": (d, f), "scale": (d,)}
  to_ours = {"q_proj": lambda w: w.T.reshape(d, n, h),
             "k_proj": lambda w: w.T.reshape(d, k, h),
             "v_proj": lambda w: w.T.reshape(d, k, h),
             "o_proj": lambda w: w.T.reshape(n, h, d),
             "gate_proj": lambda w: w.T, "up_proj": lambda w: w.T,
             "down_proj": lambda w: w.T, "scale": lambda w: w}
  layers: dict[str, dict[str, np.ndarray]] = {}
  for (module, leaf), suffix in _LAYER_NAMES.items():
    stacked = []
    for i in range(c.num_layers):
      name = f"model.layers.{i}.{suffix}"
      stacked.append(to_ours[leaf](expect(name, get(name), hf_shapes[leaf])))
    layers.setdefault(module, {})[leaf] = np.stack(stacked).astype(dt)

  params = {
      "embed": expect("model.embed_tokens.weight", get("model.embed_tokens.weight"),
                      (c.vocab_size, d)).astype(dt),
      "final_norm": {"scale": expect("model.norm.weight", get("model.norm.weight"), (d,)).astype(dt)},
      "layers": layers,
  }
  if not c.tie_embeddings:
    name = "lm_head.weight" if "lm_head.weight" in state else "model.embed_tokens.weight"
    params["lm_head"] = expect(name, get(name), (c.vocab_size, d)).T.astype(dt)
  if query_embed is None and QUERY_EMBED_NAME in state:
    query_embed = get(QUERY_EMBED_NAME)
  if query_embed is None:
    query_embed = np.random.default_rng(0).normal(0.0, c.query_init_scale, (d,))
  params["query_embed"] = expect(QUERY_EMBED_NAME, np.asarray(query_embed, np.float32).reshape(-1),
                                 (d,)).astype(dt)
  return {"params": params}


def params_to_hf(params: Mapping[str, Any], config: ModelConfig) -> dict[str, np.ndarray]:
  """HF LLaMA state dict (numpy fp32, [out, in] layouts) from a3_jax params."""
  p = params["params"] if "params" in params else params
  c = config
  d = c.d_model
  from_ours = {"q_proj": lambda w: w.reshape(d, -1).T, "k_proj": lambda w: w.reshape(d, -1).T,
               "v_proj": lambda w: w.reshape(d, -1).T, "o_proj": lambda w: w.reshape(-1, d).T,
               "gate_proj": lambda w: w.T, "up_proj": lambda w: w.T,
               "down_proj": lambda w: w.T, "scale": lambda w: w}
  state = {"model.embed_tokens.weight": np.asarray(p["embed"], np.float32),
           "model.norm.weight": np.asarray(p["final_norm"]["scale"], np.float32),
           QUERY_EMBED_NAME: np.asarray(p["query_embed"], np.float32).reshape(1, 1, d)}
  for (module, leaf), suffix in _LAYER_NAMES.items():
    stacked = np.asarray(p["layers"][module][leaf], np.float32)
    for i in range(c.num_layers):
      state[f"model.layers.{i}.{suffix}"] = np.ascontiguousarray(from_ours[leaf](stacked[i]))
  if not c.tie_embeddings:
    state["lm_head.weight"] = np.ascontiguousarray(np.asarray(p["lm_head"], np.float32).T)
  return state
