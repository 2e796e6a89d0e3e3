"""The A3 two-stream LLaMA decoder (Flax linen).

Two streams run through the same standard pre-norm LLaMA blocks with shared
weights (docs/design.md §1):
  content stream h: token embeddings; row i sees keys with group <= group(i).
  query stream g:   one learned start vector; row i sees keys with group < group(i).
Keys and values come from the content stream only; RoPE uses original positions.

One general entry point, `A3LM.forward`, takes content rows and query rows
separately and optionally a KV cache of earlier content, so that training
(both streams over the same T positions), the causal baseline (content only) and
cached decoding (new content rows + query rows against the cache) are one code path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from a3_jax import attention
from a3_jax.config import ModelConfig
from a3_jax.layers import MLP, Projections, RMSNorm, _param, apply_rope, rope_inv_freq
from a3_jax.errors import UserError

if TYPE_CHECKING:  # an annotation only: decoding imports this module
  from a3_jax.decoding.cache import KVCache

_ACT = ("act_batch", "act_length", "act_embed")
_ACT_HEADS = ("act_batch", "act_length", "act_heads", None)


class Rows(NamedTuple):
  """Per-row attention metadata of one stream's rows ([B, T] int32 each).

  limit: the largest key group the row may see (content: its group; query: group-1).
  seg:   segment id (document within a packed row); 0 = padding.
  pos:   original position, for RoPE.
  """

  limit: jax.Array
  seg: jax.Array
  pos: jax.Array


class DecoderLayer(nn.Module):
  """Standard LLaMA block applied to both streams: x += attn(norm1 x); x += mlp(norm2 x).

  query_only: the block's content rows feed nothing after it (the last layer of a
  pass whose content output is unused): it still makes their keys/values, but
  attends, projects and runs the MLP for the query rows alone, and returns only those.
  """

  config: ModelConfig
  query_only: bool = False

  @nn.compact
  def __call__(self, x_BxRxD, cache_kv, content: Rows, rows: Rows, cache_group, cache_seg,
               cache_write=None):
    """x: both streams stacked on the row axis, content rows [:T] then query rows;
    rows: their stacked metadata; content: that of the T content rows (= the new keys).
    cache_write: None (attend over cache ++ new keys), or a function (k, v) -> the
    cache's (keys, values) [B, C, K, H] with the new ones written in place, whose
    cache_group/cache_seg already describe them."""
    cfg = self.config
    t = content.pos.shape[1]
    attn_norm, mlp_norm = RMSNorm(cfg, name="attn_norm"), RMSNorm(cfg, name="mlp_norm")
    proj, mlp = Projections(cfg, name="attn"), MLP(cfg, name="mlp")
    inv_freq = rope_inv_freq(cfg)

    xn_BxRxD = attn_norm(x_BxRxD)
    # Keys and values come from the content rows only; queries from both streams.
    k_BxTxKxH, v_BxTxKxH = proj.key_value(xn_BxRxD[:, :t])
    k_BxTxKxH = apply_rope(k_BxTxKxH, content.pos, inv_freq)
    if self.query_only:  # from here on only the query rows [t:] are carried
      x_BxRxD, xn_BxRxD = x_BxRxD[:, t:], xn_BxRxD[:, t:]
      rows = Rows(*(a[:, t:] for a in rows))
    q_BxRxNxH = apply_rope(proj.query(xn_BxRxD), rows.pos, inv_freq)
    q_BxRxNxH = nn.with_logical_constraint(q_BxRxNxH, _ACT_HEADS)

    # Keys: cached content (earlier groups) followed by this call's content rows,
    # whose key group is their own group = their content limit.
    keys, values = k_BxTxKxH, v_BxTxKxH
    key_group, key_seg = content.limit, content.seg
    if cache_write is not None:  # the new keys live in the cache: attend over it alone
      keys, values = cache_write(k_BxTxKxH, v_BxTxKxH)
      key_group, key_seg = cache_group, cache_seg
    elif cache_kv is not None:
      keys = jnp.concatenate([cache_kv[0].astype(keys.dtype), keys], axis=1)
      values = jnp.concatenate([cache_kv[1].astype(values.dtype), values], axis=1)
      key_group = jnp.concatenate([cache_group, key_group], axis=1)
      key_seg = jnp.concatenate([cache_seg, key_seg], axis=1)

    out_BxRxNxH = attention.attend(
        cfg.attention, q_BxRxNxH, keys, values, rows.limit, rows.seg, key_group, key_seg,
        chunk=cfg.attention_chunk, group_size=cfg.attention_group_size,
        teacher_forced=cache_kv is None and cache_write is None and not self.query_only)
    x_BxRxD = x_BxRxD + nn.with_logical_constraint(proj.out(out_BxRxNxH), _ACT)
    x_BxRxD = x_BxRxD + mlp(mlp_norm(x_BxRxD))
    x_BxRxD = nn.with_logical_constraint(x_BxRxD, _ACT)
    return x_BxRxD, (k_BxTxKxH, v_BxTxKxH)


def _remat(layer_cls, policy: str):
  if policy == "none":
    return layer_cls
  policies = {"full": jax.checkpoint_policies.nothing_saveable,
              "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}
  return nn.remat(layer_cls, prevent_cse=False, policy=policies[policy])


class A3LM(nn.Module):
  """Embeddings, the scanned stack of decoder layers, final norm and LM head.

  Parameters: embed [V, D]; query_embed [D]; layers/* with a leading [L] axis;
  final_norm/scale [D]; lm_head [D, V] unless tie_embeddings.
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embed = _param(self, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                        cfg.init_std, cfg.weight_dtype)
    self.query_embed = _param(self, "query_embed", (cfg.d_model,), ("embed",),
                              cfg.query_init_scale, cfg.weight_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = _param(self, "lm_head", (cfg.d_model, cfg.vocab_size),
                            ("embed", "vocab"), cfg.init_std, cfg.weight_dtype)
    self.layers = nn.scan(
        _remat(DecoderLayer, cfg.remat),
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        unroll=1 if cfg.scan_layers else cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name="layers")
    self.final_norm = RMSNorm(cfg, name="final_norm")

  def forward(self, tokens_BxT, content: Rows, query: Rows | None = None,
              cache: "KVCache | None" = None, *, content_out: bool = True,
              cache_slots=None):
    """Runs content rows (with tokens) and query rows through every layer.

    Returns (content hidden [B,T,D] or None, query hidden [B,Q,D] or None, new K/V
    (k, v) each [L,B,T,K,H]); hidden states are final-normed. content_out=False
    (with query rows) skips the last layer's work for content rows, which then
    feed nothing, and returns None for the content hidden state.

    cache_slots [B, T] (with a cache): the cache slot of each content row (>= C:
    not written). The new keys/values are then written into the cache in place,
    every layer attends over the cache alone, and the third output is the updated
    cache's (k, v) [L,B,C,K,H] (its group/seg: the content rows' limit/seg at
    those slots, for the caller to record).
    """
    cfg = self.config
    b, t = tokens_BxT.shape
    chex.assert_shape(content, (b, t))  # every field of the Rows
    if query is not None:
      chex.assert_equal_shape([query.limit, query.seg, query.pos])
    h = jnp.take(self.embed, tokens_BxT, axis=0).astype(cfg.compute_dtype)
    x, rows = h, content
    if query is not None:  # stack the query stream under the content stream, once
      g = jnp.broadcast_to(self.query_embed.astype(cfg.compute_dtype),
                           query.pos.shape + (cfg.d_model,))
      x = jnp.concatenate([h, g], axis=1)
      rows = Rows(*(jnp.concatenate(pair, axis=1) for pair in zip(content, query)))
    x = nn.with_logical_constraint(x, _ACT)
    cache_kv = None if cache is None else (cache.k, cache.v)
    cache_group = None if cache is None else cache.group
    cache_seg = None if cache is None else cache.seg
    skip_content = query is not None and not content_out
    if cache_slots is not None:
      cache_group, cache_seg = _write_rows(cache_slots, (cache_group, content.limit),
                                           (cache_seg, content.seg))
    args = (content, rows, cache_group, cache_seg)
    if self.is_initializing() or (cfg.scan_layers and cache_slots is None):
      x, kv = self.layers(x, cache_kv, *args)
      if skip_content:
        x = x[:, tokens_BxT.shape[1]:]
    else:
      x, kv = self._unrolled_layers(x, cache_kv, args, skip_content, cache_slots)
    x = self.final_norm(x)
    if skip_content:
      return None, x, kv
    h, g = x[:, :t], (x[:, t:] if query is not None else None)
    chex.assert_shape(h, (b, t, cfg.d_model))
    if cache_slots is None:
      chex.assert_shape(kv, (cfg.num_layers, b, t, cfg.num_kv_heads, cfg.head_dim))
    return h, g, kv

  def _unrolled_layers(self, x_BxRxD, cache_kv, args, skip_content: bool, cache_slots=None):
    """The layer stack as a Python loop over slices of the stacked [L] params (same
    parameters as the scan); the last layer may run for the query rows alone. With
    cache_slots, each layer's new K/V are written into the [L] cache in place."""
    cfg = self.config
    stacked = self.layers.variables["params"]
    ks, vs = [], []
    cache = list(cache_kv) if cache_slots is not None else None
    # A decoding step has no backward pass to remat for (and remat cannot take the
    # cache-writing function as an argument).
    layer_cls = DecoderLayer if cache is not None else _remat(DecoderLayer, cfg.remat)
    for i in range(cfg.num_layers):
      last = skip_content and i == cfg.num_layers - 1
      layer = layer_cls(cfg, query_only=last, parent=None)
      params_i = jax.tree.map(lambda a, i=i: a[i], stacked)
      kv_i = None if cache_kv is None else (cache_kv[0][i], cache_kv[1][i])
      write = None
      if cache is not None:
        def write(k, v, i=i):
          cache[0], cache[1] = _write_rows(cache_slots, (cache[0], k), (cache[1], v), layer=i)
          return cache[0][i], cache[1][i]
        kv_i = None
      x_BxRxD, (k, v) = layer.apply({"params": params_i}, x_BxRxD, kv_i, *args, write)
      ks.append(k)
      vs.append(v)
    if cache is not None:
      return x_BxRxD, tuple(cache)
    return x_BxRxD, (jnp.stack(ks), jnp.stack(vs))


  def logits(self, hidden_BxTxD):
    """LM head: [B,T,D] -> fp32 [B,T,V]."""
    cfg = self.config
    w_DxV = self.embed.T if cfg.tie_embeddings else self.lm_head
    logits = jnp.einsum("BTD,DV->BTV", hidden_BxTxD, w_DxV.astype(cfg.compute_dtype),
                        preferred_element_type=jnp.float32)
    chex.assert_type(logits, jnp.float32)
    return nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))

  def __call__(self, tokens_BxT, groups_BxT, segment_ids_BxT=None, positions_BxT=None,
               *, streams: str = "both"):
    """Teacher-forced pass over one grouping.

    tokens, groups: [B, T] ints; segment_ids [B, T] (0 = padding; default all 1);
    positions [B, T] (default arange). streams='both' returns query-stream logits
    (and content-stream logits); 'content' runs the content stream alone.
    Returns a dict of fp32 [B, T, V] logits: 'query' (if run) and 'content'.
    """
    if streams not in ("both", "content"):
      raise UserError(f"streams must be 'both' or 'content', got {streams!r}")
    validate_inputs(self.config, tokens_BxT, groups_BxT, segment_ids_BxT, positions_BxT)
    content, query = stream_rows(groups_BxT, segment_ids_BxT, positions_BxT)
    h, g, _ = self.forward(tokens_BxT, content, query if streams == "both" else None)
    out = {"content": self.logits(h)}
    if g is not None:
      out["query"] = self.logits(g)
    return out


def _write_rows(slots_BxT, *pairs, layer=None):
  """For each (buffer, new): buffer[(layer,) b, slots[b, t]] = new[b, t]; slots past the
  buffer's end are dropped. Buffers [B, C, ...] (or [L, B, C, ...] with layer)."""
  b = slots_BxT.shape[0]
  row_BxT = jnp.broadcast_to(jnp.arange(b)[:, None], slots_BxT.shape)
  index = (row_BxT, slots_BxT) if layer is None else (layer, row_BxT, slots_BxT)
  return tuple(buf.at[index].set(new.astype(buf.dtype), mode="drop") for buf, new in pairs)


def validate_inputs(config: ModelConfig, tokens_BxT, groups_BxT, segment_ids_BxT=None,
                    positions_BxT=None) -> None:
  """Raises ValueError for inputs a user can get wrong: shapes, dtypes, and (when
  the values are concrete, i.e. outside jit) token ids and positions out of range."""
  tokens_shape = getattr(tokens_BxT, "shape", None)
  if tokens_shape is None or len(tokens_shape) != 2:
    raise UserError(f"tokens must be a [batch, length] array, got shape {tokens_shape}")
  named = {"tokens": tokens_BxT, "group ids": groups_BxT, "segment ids": segment_ids_BxT,
           "positions": positions_BxT}
  for name, arr in named.items():
    if arr is None:
      continue
    if getattr(arr, "shape", None) != tokens_shape:
      raise UserError(f"{name} have shape {getattr(arr, 'shape', None)}, expected the "
                       f"token shape {tokens_shape}")
    if not jnp.issubdtype(arr.dtype, jnp.integer):
      raise UserError(f"{name} must be integers, got dtype {arr.dtype}")
  if not isinstance(tokens_BxT, jax.core.Tracer) and tokens_BxT.size:
    concrete = np.asarray(tokens_BxT)
    lo, hi = int(concrete.min()), int(concrete.max())
    if lo < 0 or hi >= config.vocab_size:
      raise UserError(f"token ids must lie in [0, {config.vocab_size}), got range "
                       f"[{lo}, {hi}]")
  if (positions_BxT is not None and not isinstance(positions_BxT, jax.core.Tracer)
      and positions_BxT.size and int(np.min(np.asarray(positions_BxT))) < 0):
    raise UserError("positions must be >= 0")


def stream_rows(groups_BxT, segment_ids_BxT=None, positions_BxT=None):
  """Content and query Rows for a teacher-forced pass over one grouping."""
  groups_BxT = jnp.asarray(groups_BxT, jnp.int32)
  b, t = groups_BxT.shape
  if segment_ids_BxT is None:
    segment_ids_BxT = jnp.ones((b, t), jnp.int32)
  if positions_BxT is None:
    positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  seg = jnp.asarray(segment_ids_BxT, jnp.int32)
  pos = jnp.asarray(positions_BxT, jnp.int32)
  return Rows(groups_BxT, seg, pos), Rows(groups_BxT - 1, seg, pos)


def init_params(config: ModelConfig, key: jax.Array, batch: int = 1, length: int = 8) -> Any:
  """Boxed (logically partitioned) parameters of A3LM."""
  tokens = jnp.zeros((batch, length), jnp.int32)
  groups = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  return A3LM(config).init(key, tokens, groups)
