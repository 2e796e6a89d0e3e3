"""Generation-order two-stream attention: static block-causal masks for kernels.

When every group has the same size k, sorting the tokens into generation order
(padding last, then by segment, then by group) puts group j of a segment in
block j of k consecutive slots, and the visibility rule of attention/rule.py
becomes a static mask plus segment ids (slot indices i, j in generation order):

  content rows   i // k >= j // k      (its own group and earlier ones)
  query rows     i // k >  j // k      (strictly earlier groups)

A static mask is what TPU splash attention needs to skip blocks, so on TPU the
slots go through `splash_attention` (GQA native); elsewhere through
`jax.nn.dot_product_attention` with the same mask made dense. Outputs are
scattered back to the original positions. Rows that see no key (query rows of a
segment's first group, padding rows) are zero, as in every other path.

Precondition (`block_aligned`): within each segment, two tokens share a group
iff they share a block. It holds for ar (k = 1), and for block:k / perm:k when
every document's length is a multiple of k (a partial last group shifts the
next document's blocks); otherwise use attention='chunked'.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask
from jax.sharding import PartitionSpec as P

from a3_jax import sharding as shd

_LANES = 128  # splash tiles rows and keys in multiples of this
# Splash sink logit: starts every row's running max and denominator (exp(0) = 1)
# so that a row with no visible key ends at 0 / 1 = 0 instead of 0 / 0; any
# visible score then rescales the sink's term by exp(-1e30 - m) = 0.
_EMPTY_ROW_SINK = -1e30


def generation_order(group_BxT, seg_BxT):
  """[B, T] permutation: slot -> position (padding last, then segment, then group)."""
  return jnp.lexsort((group_BxT, seg_BxT, seg_BxT == 0), axis=-1)


def block_aligned(group_BxT, seg_BxT, group_size: int):
  """[B] bool: the row satisfies the module's precondition for this group size."""
  order_BxT = generation_order(group_BxT, seg_BxT)
  g = jnp.take_along_axis(group_BxT, order_BxT, axis=1)
  s = jnp.take_along_axis(seg_BxT, order_BxT, axis=1)
  block_T = jnp.arange(g.shape[1]) // group_size
  same_seg = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] != 0)
  same_group = g[:, 1:] == g[:, :-1]
  same_block = (block_T[1:] == block_T[:-1])[None]
  return jnp.all(~same_seg | (same_group == same_block), axis=1)


def slot_mask(q_slot, kv_slot, t: int, group_size: int):
  """Static mask over (row slot, key slot); rows [0, t) content, [t, 2t) query.

  Works on numpy arrays (mask preprocessing) and inside the splash kernel.
  """
  content = (q_slot < t) & (q_slot // group_size >= kv_slot // group_size)
  query = (q_slot >= t) & ((q_slot - t) // group_size > kv_slot // group_size)
  return content | query


class _TwoStreamMask(splash_attention_mask._ComputableMask):
  """`slot_mask` over rows = [content slots; query slots] and key slots."""

  def __init__(self, rows: int, t: int, group_size: int):
    self.t, self.group_size = t, group_size
    super().__init__((rows, t), functools.partial(slot_mask, t=t, group_size=group_size))

  def __eq__(self, other):
    return (type(other) is type(self) and self.shape == other.shape
            and (self.t, self.group_size) == (other.t, other.group_size))

  def __hash__(self):
    return hash((type(self), self.shape, self.t, self.group_size))


def _splash_kernel(heads: int, rows: int, t: int, group_size: int, interpret: bool):
  """Built in the trace that calls it: its mask tables become constants of that trace
  (no eager arrays, which compile-only devices could not hold); the numpy work behind
  them is cached by splash itself (equal masks hash equal)."""
  block = next(b for b in (512, 256, _LANES) if t % b == 0 and rows % b == 0)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block,
                            block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  mask = splash.MultiHeadMask([_TwoStreamMask(rows, t, group_size)] * heads)
  return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                                interpret=interpret)


def _splash_local(q_BxRxNxH, k_BxTxKxH, v_BxTxKxH, seg_rows_BxR, seg_BxT, group_size,
                  interpret):
  """Splash over the rows and heads one device holds (the kernel cannot be partitioned)."""
  b, r, n, h = q_BxRxNxH.shape
  t = k_BxTxKxH.shape[1]
  kernel = _splash_kernel(n, r, t, group_size, interpret)
  q_BxNxRxH = jnp.swapaxes(q_BxRxNxH * (h ** -0.5), 1, 2)  # splash does not scale
  sinks_N = jnp.full((n,), _EMPTY_ROW_SINK, jnp.float32)

  def one(q, k, v, seg_rows, seg):
    return kernel(q, k, v, splash.SegmentIds(q=seg_rows, kv=seg), sinks_N)

  out_BxNxRxH = jax.vmap(one)(q_BxNxRxH, jnp.swapaxes(k_BxTxKxH, 1, 2),
                              jnp.swapaxes(v_BxTxKxH, 1, 2), seg_rows_BxR, seg_BxT)
  return jnp.swapaxes(out_BxNxRxH, 1, 2)


def _splash_attention(q_BxRxNxH, k_BxTxKxH, v_BxTxKxH, seg_rows_BxR, seg_BxT,
                      group_size, interpret):
  """Splash per device: under a mesh, inside shard_map with rows split as the batch
  and heads as the kv heads are (sharding.py's act_batch / act_heads rules; the query
  heads of one kv head stay on its device), so every device runs whole GQA groups."""
  local = functools.partial(_splash_local, group_size=group_size, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q_BxRxNxH, k_BxTxKxH, v_BxTxKxH, seg_rows_BxR, seg_BxT)
  b, kv_heads = k_BxTxKxH.shape[0], k_BxTxKxH.shape[2]
  rows, = shd.logical_to_spec(("act_batch",), (b,), mesh)
  heads, = shd.logical_to_spec(("act_heads",), (kv_heads,), mesh)
  x_spec, seg_spec = P(rows, None, heads, None), P(rows, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(x_spec, x_spec, x_spec, seg_spec, seg_spec),
                       out_specs=x_spec, check_vma=False)(
                           q_BxRxNxH, k_BxTxKxH, v_BxTxKxH, seg_rows_BxR, seg_BxT)


def _dense_attention(q_BxRxNxH, k_BxTxKxH, v_BxTxKxH, seg_rows_BxR, seg_BxT, group_size):
  r, t = q_BxRxNxH.shape[1], k_BxTxKxH.shape[1]
  static_RxT = slot_mask(jnp.arange(r)[:, None], jnp.arange(t)[None, :], t, group_size)
  mask_BxRxT = static_RxT & (seg_rows_BxR[:, :, None] == seg_BxT[:, None, :])
  # dot_product_attention returns the mean of V for an all-False row (and some
  # backends NaN): give such rows key 0 and zero them afterwards.
  has_key_BxR = jnp.any(mask_BxRxT, axis=-1)
  mask_BxRxT = mask_BxRxT | (~has_key_BxR[:, :, None] & (jnp.arange(t) == 0))
  out = jax.nn.dot_product_attention(q_BxRxNxH, k_BxTxKxH, v_BxTxKxH,
                                     mask=mask_BxRxT[:, None])
  return jnp.where(has_key_BxR[:, :, None, None], out, 0)


def two_stream_attention(q_BxRxNxH, k_BxTxKxH, v_BxTxKxH, group_BxT, seg_BxT, *,
                         group_size: int, backend: str = "auto", interpret: bool = False):
  """Grouped attention of content (and query) rows over the same T positions.

  q [B, R, N, H] with R = T (content rows) or 2T (content rows, then query rows,
  of positions 0..T-1 in order, as the model stacks them); k, v [B, T, K, H];
  group, seg [B, T] ints (the keys' and content rows' group and segment; query
  rows use group - 1). Equals `attention.einsum_attention` with those row/key
  integers whenever `block_aligned` holds (checked here when the ids are
  concrete). backend: 'splash' (TPU kernel; `interpret` runs it on CPU), 'xla'
  (jax.nn.dot_product_attention) or 'auto' (splash when the devices the step is built
  for are TPUs: sharding.mesh_platform, never the host's backend). Returns [B, R, N, H]
  in v's dtype.
  """
  b, r, n, h = q_BxRxNxH.shape
  t = k_BxTxKxH.shape[1]
  if r not in (t, 2 * t):
    raise ValueError(f"two-stream attention needs T or 2T query rows for T={t} keys, got {r}")
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  if backend == "auto":
    backend = "splash" if shd.mesh_platform() == "tpu" else "xla"
  if backend not in ("splash", "xla"):
    raise ValueError(f"backend must be 'auto', 'splash' or 'xla', got {backend!r}")
  group_BxT, seg_BxT = jnp.asarray(group_BxT, jnp.int32), jnp.asarray(seg_BxT, jnp.int32)
  if not isinstance(group_BxT, jax.core.Tracer) and not isinstance(seg_BxT, jax.core.Tracer):
    with jax.ensure_compile_time_eval():
      aligned = bool(jnp.all(block_aligned(group_BxT, seg_BxT, group_size)))
    if not aligned:
      raise ValueError(f"groups are not uniform blocks of {group_size} in generation "
                       "order; use attention='chunked' for this grouping")

  # Gather into generation order; pad T to the splash tile (padding: segment 0).
  order_BxT = generation_order(group_BxT, seg_BxT)
  tp = -(-t // _LANES) * _LANES if backend == "splash" else t

  def to_slots(x_BxT):
    x = jnp.take_along_axis(x_BxT, order_BxT.reshape(order_BxT.shape + (1,) * (x_BxT.ndim - 2)),
                            axis=1)
    return jnp.pad(x, [(0, 0), (0, tp - t)] + [(0, 0)] * (x.ndim - 2))

  streams = r // t
  q_slots = jnp.concatenate([to_slots(q_BxRxNxH[:, i * t:(i + 1) * t])
                             for i in range(streams)], axis=1)
  k_slots, v_slots, seg_slots = to_slots(k_BxTxKxH), to_slots(v_BxTxKxH), to_slots(seg_BxT)
  seg_rows = jnp.concatenate([seg_slots] * streams, axis=1)
  if backend == "splash":
    out = _splash_attention(q_slots, k_slots, v_slots, seg_rows, seg_slots, group_size,
                            interpret)
  else:
    out = _dense_attention(q_slots, k_slots, v_slots, seg_rows, seg_slots, group_size)
  # Padding rows matched padding keys by segment id; the rule says they see nothing.
  out = jnp.where((seg_rows != 0)[:, :, None, None], out, 0).astype(v_BxTxKxH.dtype)

  # Scatter back: slot s of each stream holds position order[s].
  inverse_BxT = jnp.argsort(order_BxT, axis=1)[:, :, None, None]
  return jnp.concatenate([jnp.take_along_axis(out[:, i * tp:i * tp + t], inverse_BxT, axis=1)
                          for i in range(streams)], axis=1)
