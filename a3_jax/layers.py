"""LLaMA building blocks in Flax linen: RMSNorm, RoPE, SwiGLU MLP, GQA projections.

Every parameter carries logical axis names (vocabulary in a3_jax/sharding.py);
the layout of each weight is written next to it, in the shape letters of
docs/design.md (D model, N query heads, K kv heads, H head dim, F mlp, V vocab).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from a3_jax.config import ModelConfig


def _param(module: nn.Module, name: str, shape, axes, std: float, dtype):
  init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
  return module.param(name, init, shape, dtype)


class RMSNorm(nn.Module):
  """x / rms(x) * scale, computed in fp32 like HF LlamaRMSNorm."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.config
    scale_D = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        (cfg.d_model,), cfg.weight_dtype)
    x32 = x_BxTxD.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.rms_eps)
    # HF casts back to the input dtype before the scale multiply.
    return scale_D.astype(cfg.compute_dtype) * x32.astype(cfg.compute_dtype)


def rope_inv_freq(config: ModelConfig) -> jnp.ndarray:
  """[H/2] inverse frequencies, with llama3 scaling when configured (HF layout)."""
  h = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  s = config.rope_scaling
  if s is None:
    return inv_freq
  low_wavelen = s.original_max_position / s.low_freq_factor
  high_wavelen = s.original_max_position / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x_BxTxNxH, positions_BxT, inv_freq_Hhalf):
  """Rotates x by its original positions, rotate-half layout (as HF LLaMA)."""
  freqs_BxTxHh = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_Hhalf
  emb_BxTx1xH = jnp.concatenate([freqs_BxTxHh, freqs_BxTxHh], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb_BxTx1xH), jnp.sin(emb_BxTx1xH)
  x32 = x_BxTxNxH.astype(jnp.float32)
  half = x32.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x_BxTxNxH.dtype)


class Projections(nn.Module):
  """Q, K, V and O weights of one GQA attention layer.

  q_proj [D, N, H], k_proj / v_proj [D, K, H], o_proj [N, H, D].
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dt, std = cfg.weight_dtype, cfg.init_std
    self.q_proj = _param(self, "q_proj", (d, n, h), ("embed", "q_heads", "head_dim"), std, dt)
    self.k_proj = _param(self, "k_proj", (d, k, h), ("embed", "kv_heads", "head_dim"), std, dt)
    self.v_proj = _param(self, "v_proj", (d, k, h), ("embed", "kv_heads", "head_dim"), std, dt)
    self.o_proj = _param(self, "o_proj", (n, h, d), ("q_heads", "head_dim", "embed"), std, dt)

  def query(self, x_BxTxD):
    w = self.q_proj.astype(self.config.compute_dtype)
    return jnp.einsum("BTD,DNH->BTNH", x_BxTxD, w)

  def key_value(self, x_BxTxD):
    dt = self.config.compute_dtype
    k = jnp.einsum("BTD,DKH->BTKH", x_BxTxD, self.k_proj.astype(dt))
    v = jnp.einsum("BTD,DKH->BTKH", x_BxTxD, self.v_proj.astype(dt))
    return k, v

  def out(self, attn_BxTxNxH):
    w = self.o_proj.astype(self.config.compute_dtype)
    return jnp.einsum("BTNH,NHD->BTD", attn_BxTxNxH, w)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)); gate/up [D, F], down [F, D]."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.config
    d, f, dt, std = cfg.d_model, cfg.mlp_dim, cfg.weight_dtype, cfg.init_std
    gate = _param(self, "gate_proj", (d, f), ("embed", "mlp"), std, dt)
    up = _param(self, "up_proj", (d, f), ("embed", "mlp"), std, dt)
    down = _param(self, "down_proj", (f, d), ("mlp", "embed"), std, dt)
    cd = cfg.compute_dtype
    a_BxTxF = jax.nn.silu(x_BxTxD @ gate.astype(cd)) * (x_BxTxD @ up.astype(cd))
    a_BxTxF = nn.with_logical_constraint(a_BxTxF, ("act_batch", "act_length", "act_mlp"))
    return a_BxTxF @ down.astype(cd)
