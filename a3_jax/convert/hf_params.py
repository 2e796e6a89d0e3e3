"""Mapping between Hugging Face LLaMA tensor names/layouts and a3_jax params.

HF stores linear weights as [out, in]; we store q_proj [D, N, H], k/v_proj
[D, K, H], o_proj [N, H, D], gate/up [D, F], down [F, D], layers stacked on a
leading [L] axis. The query-stream start vector travels as `model.query_embed`
(shape [1, 1, D], as in the authors' code). Pure numpy: no torch needed here.

Every param leaf is described by a `Leaf` (which HF tensors, which layout), and
`read_leaf` builds any rectangular slice of it from a `read(name, index)`
function that returns a slice of one HF tensor. Loaders use that to put each
device's shard in place without materialising the whole model; `params_from_hf`
is the same mapping over an in-memory state dict.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from a3_jax.config import ModelConfig, RopeScaling
from a3_jax.errors import UserError

QUERY_EMBED_NAME = "model.query_embed"
EMBED_NAME = "model.embed_tokens.weight"
LM_HEAD_NAME = "lm_head.weight"
NORM_NAME = "model.norm.weight"

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

# How each of our per-layer leaves is laid out relative to the HF weight W:
#   same: W itself;  t: W.T;  t_split_out: W.T with W's rows cut into heads
#   ([D, X, H] from W [X*H, D]);  t_split_in: W.T with W's columns cut into heads
#   ([X, H, D] from W [D, X*H]).
_LAYOUTS = {"scale": "same", "q_proj": "t_split_out", "k_proj": "t_split_out",
            "v_proj": "t_split_out", "o_proj": "t_split_in", "gate_proj": "t",
            "up_proj": "t", "down_proj": "t"}

Index = tuple[slice, ...]
ReadFn = Callable[[str, Index], np.ndarray]


def check_llama_config(hf: Mapping[str, Any]) -> None:
  """Rejects configs of models that are not plain LLaMA decoders."""
  archs = hf.get("architectures") or []
  model_type = hf.get("model_type")
  if model_type != "llama" or any(a != "LlamaForCausalLM" for a in archs):
    raise UserError(
        f"unsupported architecture {', '.join(archs) or '(none given)'} "
        f"(model_type {model_type!r}); supported: LlamaForCausalLM (model_type 'llama': "
        "LLaMA 2, 3, 3.1, 3.2, SmolLM2)")


def _number(d: Mapping[str, Any], key: str, kind: type, default: Any = None):
  """d[key] (or `default` where absent or null) as an int or float; another type is a
  UserError naming the key (an int field accepts only integral numbers)."""
  value = d.get(key)
  if value is None:
    return default
  integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      kind is int and not integral):
    expected = "an integer" if kind is int else "a number"
    raise UserError(f"model config: {key}={value!r} is not {expected}")
  return kind(value)


def config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """ModelConfig from a transformers LlamaConfig dict (4.x or 5.x keys).

  Defaults for absent keys are LlamaConfig's. Features our decoder does not have
  (biases, other activations, other RoPE scalings) raise ValueError.
  """
  missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                         "num_attention_heads", "intermediate_size") if k not in hf]
  if missing:
    raise UserError(f"model config is missing {missing}")
  for key, supported in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
    if hf.get(key, supported) != supported:
      raise UserError(f"unsupported LLaMA variant: {key}={hf[key]!r} (supported: {supported!r})")
  rope = hf.get("rope_parameters") or {}  # transformers 5.x
  scaling = hf.get("rope_scaling") or (
      rope if isinstance(rope, dict) and rope.get("rope_type") not in (None, "default") else None)
  theta = _number(rope if isinstance(rope, dict) and "rope_theta" in rope else hf,
                  "rope_theta", float, 10000.0)
  rope_scaling = None
  if scaling:
    if not isinstance(scaling, dict):
      raise UserError(f"model config: rope_scaling={scaling!r} is not an object")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ("llama3", "default"):
      raise UserError(f"unsupported RoPE scaling type {kind!r} (supported: llama3)")
    if kind == "llama3":
      absent = [k for k in ("factor", "low_freq_factor", "high_freq_factor",
                            "original_max_position_embeddings") if k not in scaling]
      if absent:
        raise UserError(f"model config: llama3 rope_scaling lacks {absent}")
      rope_scaling = RopeScaling(
          factor=_number(scaling, "factor", float), low_freq_factor=_number(
              scaling, "low_freq_factor", float),
          high_freq_factor=_number(scaling, "high_freq_factor", float),
          original_max_position=_number(scaling, "original_max_position_embeddings", int))
  heads = _number(hf, "num_attention_heads", int)
  if heads < 1:
    raise UserError(f"model config: num_attention_heads must be >= 1, got {heads}")
  fields = dict(
      vocab_size=_number(hf, "vocab_size", int), d_model=_number(hf, "hidden_size", int),
      num_layers=_number(hf, "num_hidden_layers", int), num_heads=heads,
      num_kv_heads=_number(hf, "num_key_value_heads", int, None) or heads,
      head_dim=_number(hf, "head_dim", int, None) or _number(hf, "hidden_size", int) // heads,
      mlp_dim=_number(hf, "intermediate_size", int),
      max_seq_len=_number(hf, "max_position_embeddings", int, 2048),
      rope_theta=theta, rope_scaling=rope_scaling,
      rms_eps=_number(hf, "rms_norm_eps", float, 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
  fields.update(overrides)
  return ModelConfig(**fields)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """A LlamaConfig dict readable by transformers 4.x and 5.x (both RoPE spellings)."""
  c = config
  scaling = None
  if c.rope_scaling is not None:
    s = c.rope_scaling
    scaling = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
               "high_freq_factor": s.high_freq_factor,
               "original_max_position_embeddings": s.original_max_position}
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": c.vocab_size, "hidden_size": c.d_model,
      "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
      "intermediate_size": c.mlp_dim, "max_position_embeddings": c.max_seq_len,
      "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
      "rms_norm_eps": c.rms_eps, "tie_word_embeddings": c.tie_embeddings,
      "rope_theta": c.rope_theta, "rope_scaling": scaling,
      "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta,
                          **(scaling or {})},
      "torch_dtype": c.param_dtype, "dtype": c.param_dtype,
  }


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One a3_jax param leaf: its HF tensor names (one per layer if stacked) and layout."""

  names: tuple[str, ...]
  layout: str  # 'same' | 't' | 't_split_out' | 't_split_in'
  shape: tuple[int, ...]  # ours, including the leading [L] if stacked
  hf_shape: tuple[int, ...]  # of each HF tensor
  stacked: bool


def hf_leaves(config: ModelConfig) -> dict[tuple[str, ...], Leaf]:
  """Param path (below 'params') -> Leaf, for every leaf except query_embed."""
  c = config
  d, n, k, h, f, v = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
  ours = {"scale": (d,), "q_proj": (d, n, h), "k_proj": (d, k, h), "v_proj": (d, k, h),
          "o_proj": (n, h, d), "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
  hf = {"scale": (d,), "q_proj": (n * h, d), "k_proj": (k * h, d), "v_proj": (k * h, d),
        "o_proj": (d, n * h), "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}
  leaves = {
      ("embed",): Leaf((EMBED_NAME,), "same", (v, d), (v, d), False),
      ("final_norm", "scale"): Leaf((NORM_NAME,), "same", (d,), (d,), False),
  }
  if not c.tie_embeddings:
    leaves[("lm_head",)] = Leaf((LM_HEAD_NAME,), "t", (d, v), (v, d), False)
  for (module, leaf), suffix in _LAYER_NAMES.items():
    names = tuple(f"model.layers.{i}.{suffix}" for i in range(c.num_layers))
    leaves[("layers", module, leaf)] = Leaf(names, _LAYOUTS[leaf], (c.num_layers,) + ours[leaf],
                                            hf[leaf], True)
  return leaves


def check_shapes(shape_of: Callable[[str], tuple[int, ...] | None], config: ModelConfig) -> None:
  """Raises ValueError naming the first HF tensor that is missing or mis-shaped."""
  for leaf in hf_leaves(config).values():
    for name in leaf.names:
      shape = shape_of(name)
      if shape is None:
        raise UserError(f"checkpoint is missing tensor {name!r}")
      if tuple(shape) != leaf.hf_shape:
        raise UserError(f"tensor {name!r} has shape {tuple(shape)}, "
                         f"config expects {leaf.hf_shape}")


def _bounds(s: slice, size: int) -> tuple[int, int]:
  start, stop, step = s.indices(size)
  if step != 1:
    raise UserError(f"strided slices are not supported: {s}")
  return start, stop


def _read_one(leaf: Leaf, name: str, index: Index, read: ReadFn) -> np.ndarray:
  """Slice `index` (over our per-layer dims) of one HF tensor, in our layout."""
  if leaf.layout == "same":
    return read(name, index)
  if leaf.layout == "t":
    return read(name, (index[1], index[0])).T
  if leaf.layout == "t_split_out":  # ours [D, X, H] from W [X*H, D]
    x0, x1 = _bounds(index[1], leaf.shape[-2])
    h = leaf.shape[-1]
    w = read(name, (slice(x0 * h, x1 * h), index[0]))
    return w.T.reshape(w.shape[1], x1 - x0, h)[:, :, index[2]]
  if leaf.layout == "t_split_in":  # ours [X, H, D] from W [D, X*H]
    x0, x1 = _bounds(index[0], leaf.shape[-3])
    h = leaf.shape[-2]
    w = read(name, (index[2], slice(x0 * h, x1 * h)))
    return w.T.reshape(x1 - x0, h, w.shape[0])[:, index[1], :]
  raise AssertionError(leaf.layout)


def read_leaf(leaf: Leaf, index: Index, read: ReadFn, dtype) -> np.ndarray:
  """The slice `index` (one slice per dim of leaf.shape) of a leaf, as `dtype`."""
  index = tuple(index) + (slice(None),) * (len(leaf.shape) - len(index))
  if not leaf.stacked:
    return np.asarray(_read_one(leaf, leaf.names[0], index, read), dtype)
  l0, l1 = _bounds(index[0], len(leaf.names))
  return np.stack([np.asarray(_read_one(leaf, leaf.names[i], index[1:], read), dtype)
                   for i in range(l0, l1)])


def initial_query_embed(config: ModelConfig) -> np.ndarray:
  """[D] query-stream start vector for a model that has none: N(0, query_init_scale^2), seed 0."""
  return np.random.default_rng(0).normal(0.0, config.query_init_scale, (config.d_model,))


def _numpy_dtype(config: ModelConfig):
  return np.dtype(config.weight_dtype)  # bfloat16 via ml_dtypes (registered by jax)


def params_from_hf(state: Mapping[str, np.ndarray], config: ModelConfig,
                   query_embed: np.ndarray | None = None) -> dict[str, Any]:
  """Unboxed a3_jax params (numpy, param_dtype) from an HF LLaMA state dict.

  `query_embed` [D] overrides (or supplies) the query-stream start vector; if the
  state has none and none is given, `initial_query_embed` draws one.
  """
  dt = _numpy_dtype(config)
  check_shapes(lambda name: np.shape(state[name]) if name in state else None, config)
  read = lambda name, index: np.asarray(state[name])[index]
  params: dict[str, Any] = {}
  for path, leaf in hf_leaves(config).items():
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = read_leaf(leaf, (), read, dt)
  if query_embed is None and QUERY_EMBED_NAME in state:
    query_embed = state[QUERY_EMBED_NAME]
  if query_embed is None:
    query_embed = initial_query_embed(config)
  query_embed = np.asarray(query_embed, np.float32).reshape(-1)
  if query_embed.shape != (config.d_model,):
    raise UserError(f"tensor {QUERY_EMBED_NAME!r} has {query_embed.size} values, "
                     f"config expects {config.d_model}")
  params["query_embed"] = query_embed.astype(dt)
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
  state = {EMBED_NAME: np.asarray(p["embed"], np.float32),
           NORM_NAME: np.asarray(p["final_norm"]["scale"], np.float32),
           QUERY_EMBED_NAME: np.asarray(p["query_embed"], np.float32).reshape(1, 1, d)}
  for (module, leaf), suffix in _LAYER_NAMES.items():
    stacked = np.asarray(p["layers"][module][leaf], np.float32)
    for i in range(c.num_layers):
      state[f"model.layers.{i}.{suffix}"] = np.ascontiguousarray(from_ours[leaf](stacked[i]))
  if not c.tie_embeddings:
    state[LM_HEAD_NAME] = np.ascontiguousarray(np.asarray(p["lm_head"], np.float32).T)
  return state
