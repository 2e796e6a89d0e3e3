"""Model configuration: one frozen dataclass and its named presets.

Shapes of the paper's base models follow docs/paper-notes.md; `small` is the
CPU default (3.7M parameters with the 2k embedded vocabulary) and `tiny` is for tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import jax.numpy as jnp
import numpy as np
from a3_jax.errors import UserError

ATTENTION_IMPLS = ("einsum", "chunked", "kernel")
REMAT_POLICIES = ("none", "dots", "full")
_DTYPES = ("float32", "bfloat16", "float16")


def finite_in(value, dtype) -> bool:
  """Whether a number stays finite once cast to `dtype` (1e39 is a finite Python
  float but infinite in float32)."""
  with np.errstate(over="ignore"):
    return bool(np.isfinite(np.asarray(value, dtype=jnp.dtype(dtype))))


def number_problems(owner, checks) -> list[str]:
  """'NAME must be ...' for each (name, bound text, predicate, dtype) whose field of
  `owner` is not a number, not finite in `dtype`, or fails its predicate."""
  problems = []
  for name, bound, ok, dtype in checks:
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      problems.append(f"{name} must be a number, got {value!r}")
    elif not (math.isfinite(value) and finite_in(value, dtype) and ok(value)):
      problems.append(f"{name} must be a number {bound} (finite in {dtype}), got {value}")
  return problems


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """llama3-style RoPE frequency scaling (HF `rope_type: llama3`)."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192

  def __post_init__(self):
    # RoPE frequencies are computed in float32 (layers.rope_frequencies).
    problems = number_problems(self, [
        ("factor", "> 0", lambda v: v > 0, "float32"),
        ("low_freq_factor", "> 0", lambda v: v > 0, "float32"),
        ("high_freq_factor", "> low_freq_factor",  # HF divides by their difference
         lambda v: not isinstance(self.low_freq_factor, (int, float))
         or v > self.low_freq_factor, "float32"),
        ("original_max_position", ">= 1", lambda v: v >= 1, "float32")])
    if problems:
      raise UserError("invalid rope_scaling: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a two-stream LLaMA decoder.

  `head_dim` may differ from d_model // num_heads (as in some LLaMA variants).
  `query_init_scale` is the std of the learned query-stream start vector: the
  authors use 1.0, which is large next to LLaMA embeddings, so we default smaller.
  """

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_seq_len: int = 2048
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_eps: float = 1e-5
  tie_embeddings: bool = False
  dtype: str = "float32"  # activations / compute
  param_dtype: str = "float32"
  query_init_scale: float = 0.02
  init_std: float = 0.02
  attention: str = "einsum"
  attention_chunk: int = 512  # key/query tile for attention="chunked"
  # Uniform group size that attention="kernel" assumes (a3_jax/attention/kernel.py);
  # static, so every curriculum stage must use it.
  attention_group_size: int = 1
  remat: str = "none"
  scan_layers: bool = True  # False unrolls the layer loop (same params; exact XLA FLOP counts)

  def __post_init__(self):
    problems = []
    for name in ("vocab_size", "d_model", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim", "max_seq_len",
                 "attention_group_size", "attention_chunk"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{name} must be an integer, got {value!r}")
      elif value < 1:
        problems.append(f"{name} must be >= 1, got {value}")
    # Norms, RoPE and initialisation compute in float32 whatever the dtypes.
    problems += number_problems(self, [
        ("rms_eps", "> 0", lambda v: v > 0, "float32"),
        ("rope_theta", "> 0", lambda v: v > 0, "float32"),
        ("init_std", ">= 0", lambda v: v >= 0, "float32"),
        ("query_init_scale", ">= 0", lambda v: v >= 0, "float32")])
    if problems:  # the checks below compare these numbers
      raise UserError("invalid ModelConfig: " + "; ".join(problems))
    if self.num_heads % max(self.num_kv_heads, 1):
      problems.append(f"num_heads ({self.num_heads}) must be a multiple of "
                      f"num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      problems.append(f"head_dim must be even for RoPE, got {self.head_dim}")
    if self.attention not in ATTENTION_IMPLS:
      problems.append(f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
    if self.remat not in REMAT_POLICIES:
      problems.append(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        problems.append(f"{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")
    if problems:
      raise UserError("invalid ModelConfig: " + "; ".join(problems))

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise UserError(f"unknown ModelConfig fields: {unknown}")
    d = dict(d)
    if d.get("rope_scaling") is not None:
      d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    return cls(**d)

  @classmethod
  def from_json(cls, text: str) -> "ModelConfig":
    return cls.from_dict(json.loads(text))


_LLAMA3_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position=8192)
_LLAMA31_SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0,
                               high_freq_factor=4.0, original_max_position=8192)

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16, mlp_dim=128, max_seq_len=256),
    "small": ModelConfig(vocab_size=2048, d_model=256, num_layers=4, num_heads=8,
                         num_kv_heads=4, head_dim=32, mlp_dim=768, max_seq_len=1024,
                         tie_embeddings=True),
    "smollm2-135m": ModelConfig(vocab_size=49152, d_model=576, num_layers=30,
                                num_heads=9, num_kv_heads=3, head_dim=64, mlp_dim=1536,
                                max_seq_len=8192, rope_theta=100000.0,
                                tie_embeddings=True),
    "llama3.2-1b": ModelConfig(vocab_size=128256, d_model=2048, num_layers=16,
                               num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192,
                               max_seq_len=131072, rope_theta=500000.0,
                               rope_scaling=_LLAMA3_SCALING, tie_embeddings=True,
                               dtype="bfloat16"),
    "llama3.2-3b": ModelConfig(vocab_size=128256, d_model=3072, num_layers=28,
                               num_heads=24, num_kv_heads=8, head_dim=128, mlp_dim=8192,
                               max_seq_len=131072, rope_theta=500000.0,
                               rope_scaling=_LLAMA3_SCALING, tie_embeddings=True,
                               dtype="bfloat16"),
    "llama3.1-8b": ModelConfig(vocab_size=128256, d_model=4096, num_layers=32,
                               num_heads=32, num_kv_heads=8, head_dim=128, mlp_dim=14336,
                               max_seq_len=131072, rope_theta=500000.0,
                               rope_scaling=_LLAMA31_SCALING, tie_embeddings=False,
                               dtype="bfloat16"),
}


# What a run may change on a checkpoint of the same model: how the step is computed,
# never what the weights are. Every other field is architecture (shapes, vocabulary,
# RoPE, tying, norms, the stored weight dtype and init) that a checkpoint fixes.
RUNTIME_FIELDS = ("attention", "attention_chunk", "attention_group_size", "remat",
                  "scan_layers", "dtype")
ARCHITECTURE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig)
                            if f.name not in RUNTIME_FIELDS)


def architecture_diff(a: ModelConfig, b: ModelConfig) -> dict[str, tuple[Any, Any]]:
  """{field: (a's value, b's value)} of the architecture fields where a and b differ."""
  return {k: (getattr(a, k), getattr(b, k)) for k in ARCHITECTURE_FIELDS
          if getattr(a, k) != getattr(b, k)}


def _coerce(field: dataclasses.Field, text: str):
  kind = field.type if isinstance(field.type, str) else field.type.__name__
  if kind.startswith("bool"):
    if text.lower() not in ("true", "false", "1", "0"):
      raise UserError(f"--model={field.name}={text}: expected true or false")
    return text.lower() in ("true", "1")
  for cast in (int, float):
    if kind.startswith(cast.__name__):
      try:
        return cast(text)
      except ValueError:
        raise UserError(f"--model={field.name}={text}: expected {cast.__name__}") from None
  return text


def parse_overrides(overrides) -> dict[str, Any]:
  """(NAME, VALUE-text) pairs of --model flags -> {field: typed value}."""
  fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
  settable = sorted(set(fields) - {"rope_scaling"})
  out = {}
  for name, text in overrides:
    if name not in settable:
      raise UserError(f"unknown model override {name!r}; settable: {settable}")
    out[name] = _coerce(fields[name], text)
  return out


def resolve(base: ModelConfig, overrides=(), *, vocab_size: int | None = None,
            checkpoint: str | None = None) -> ModelConfig:
  """A run's model config: `base` (a preset, or the config of the checkpoint named
  `checkpoint`), the tokenizer's `vocab_size` (from scratch only: a checkpoint fixes
  its vocabulary), then the --model `overrides` ((NAME, VALUE) pairs).

  On a checkpoint only RUNTIME_FIELDS may change; an override of an architecture
  field to another value is a UserError naming the fields.
  """
  changes = parse_overrides(overrides)
  if checkpoint is None:
    return _with_overrides(base, overrides,
                           **{**({"vocab_size": vocab_size} if vocab_size else {}), **changes})
  fixed = sorted(k for k, v in changes.items()
                 if k in ARCHITECTURE_FIELDS and v != getattr(base, k))
  if fixed:
    raise UserError(f"--model={fixed[0]}=...: {checkpoint} fixes the architecture "
                    f"({', '.join(f'{k}={getattr(base, k)!r}' for k in fixed)}); "
                    f"a run from it may only change {list(RUNTIME_FIELDS)}")
  return _with_overrides(base, overrides, **changes)


def _with_overrides(base: ModelConfig, overrides, **changes) -> ModelConfig:
  """base.replace(**changes); an invalid result names the --model flags that made it."""
  try:
    return base.replace(**changes)
  except UserError as e:
    if not overrides:
      raise
    named = [(n, t) for n, t in overrides if re.search(rf"\b{n}\b", str(e))] or list(overrides)
    flags_text = " ".join(f"--model={name}={text}" for name, text in named)
    raise UserError(f"{flags_text}: {e}") from None


def get_preset(name: str, **overrides) -> ModelConfig:
  """Returns a named preset, optionally with fields replaced."""
  if name not in PRESETS:
    raise UserError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
