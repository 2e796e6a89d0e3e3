"""Memory-efficient grouped attention: online softmax over query and key tiles.

Implements the visibility rule of attention/rule.py without ever forming a
[R, S] array: rows and keys are cut into tiles, each tile's mask is built from
the per-row (limit, seg) and per-key (group, seg) integers, and a flash-style
online softmax accumulates the output in fp32. A tile pair that no row of the
batch may see is skipped (`lax.cond`): with position-ordered groupings (ar,
block) that is everything above the diagonal.

Gradients use a custom VJP that recomputes each tile's probabilities from the
saved log-sum-exp, so training memory is O(R + S) per layer instead of the
O(R * S) that autodiff through the loops would save.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from a3_jax.attention.rule import MASKED, visibility


def chunked_attention(q_BxRxNxH, k_BxSxKxH, v_BxSxKxH, row_limit_BxR, row_seg_BxR,
                      key_group_BxS, key_seg_BxS, *, chunk: int):
  """Grouped attention in tiles of at most `chunk` rows and `chunk` keys.

  q [B, R, N, H]; k, v [B, S, K, H] (N a multiple of K, GQA without copying K/V);
  row_limit, row_seg [B, R]; key_group, key_seg [B, S] ints. Any R and S: the
  last tile is padded with invisible rows/keys (segment 0). Returns [B, R, N, H]
  in v's dtype; rows that see no key are zero.
  """
  if not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"attention chunk must be a positive integer, got {chunk!r}")
  b, r, n, h = q_BxRxNxH.shape
  s, kv = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  if n % kv:
    raise ValueError(f"query heads ({n}) must be a multiple of kv heads ({kv})")
  cq, ck = min(chunk, r), min(chunk, s)
  nq, nk = -(-r // cq), -(-s // ck)

  def tiles(x, count, size):  # [B, L, ...] -> [count, B, size, ...], zero-padded
    pad = count * size - x.shape[1]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((x.shape[0], count, size) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  q_t = tiles(q_BxRxNxH.reshape(b, r, kv, n // kv, h), nq, cq)
  rows = (tiles(row_limit_BxR.astype(jnp.int32), nq, cq),
          tiles(row_seg_BxR.astype(jnp.int32), nq, cq))
  keys = (tiles(key_group_BxS.astype(jnp.int32), nk, ck),
          tiles(key_seg_BxS.astype(jnp.int32), nk, ck))
  out_t = _tiled_attention(q_t, tiles(k_BxSxKxH, nk, ck), tiles(v_BxSxKxH, nk, ck),
                           rows, keys)
  out = jnp.moveaxis(out_t, 0, 1).reshape(b, nq * cq, n, h)
  return out[:, :r]


def _loop_variant(*args):
  """Ties the arguments together so that none is computed ahead of the others.

  Under grad of an enclosing scan (the model's layer scan), JAX hoists work that
  depends only on loop-invariant inputs (the row/key integers are the same in
  every layer) out of the loop, stacking it over all tile pairs: an [R, S] array
  per mask. Tying the integers to the per-layer q/k/v keeps that work in the tile loop.
  """
  return jax.lax.optimization_barrier(args)


def _tile_mask(rows, keys):
  """[B, cq, ck] visibility of one tile pair, from its row and key integers."""
  (limit, seg), (group, kseg) = rows, keys
  return visibility(limit, seg, group, kseg)


def _scores(q_BxRxKxGxH, k_BxSxKxH, mask_BxRxS):
  """Scaled fp32 scores [B, K, G, R, S] of one tile pair, masked entries at MASKED."""
  scale = q_BxRxKxGxH.shape[-1] ** -0.5
  s = jnp.einsum("BRKGH,BSKH->BKGRS", q_BxRxKxGxH, k_BxSxKxH,
                 preferred_element_type=jnp.float32) * scale
  return jnp.where(mask_BxRxS[:, None, None], s, MASKED)


def _forward(q_t, k_t, v_t, rows, keys):
  """Tiled forward; returns out [nq, B, cq, K, G, H] (fp32) and lse [nq, B, K, G, cq]."""
  q_t, k_t, v_t, rows, keys = _loop_variant(q_t, k_t, v_t, rows, keys)

  def q_step(_, q_in):
    q_BxRxKxGxH, row = q_in
    b, r, kv, g, h = q_BxRxKxGxH.shape
    init = (jnp.full((b, kv, g, r), MASKED, jnp.float32),  # running max
            jnp.zeros((b, kv, g, r), jnp.float32),  # running denominator
            jnp.zeros((b, kv, g, r, h), jnp.float32))  # running numerator

    def k_step(carry, k_in):
      k_BxSxKxH, v_BxSxKxH, key = k_in
      mask_BxRxS = _tile_mask(row, key)

      def update(carry):
        m_BxKxGxR, l_BxKxGxR, acc_BxKxGxRxH = carry
        s = _scores(q_BxRxKxGxH, k_BxSxKxH, mask_BxRxS)
        m_new = jnp.maximum(m_BxKxGxR, jnp.max(s, axis=-1))
        p_BxKxGxRxS = jnp.exp(s - m_new[..., None]) * mask_BxRxS[:, None, None]
        alpha = jnp.exp(m_BxKxGxR - m_new)
        acc_BxKxGxRxH = alpha[..., None] * acc_BxKxGxRxH + jnp.einsum(
            "BKGRS,BSKH->BKGRH", p_BxKxGxRxS.astype(v_BxSxKxH.dtype), v_BxSxKxH,
            preferred_element_type=jnp.float32)
        return m_new, alpha * l_BxKxGxR + jnp.sum(p_BxKxGxRxS, axis=-1), acc_BxKxGxRxH

      return jax.lax.cond(jnp.any(mask_BxRxS), update, lambda c: c, carry), None

    (m, l, acc), _ = jax.lax.scan(k_step, init, (k_t, v_t, keys))
    empty = l == 0
    out_BxKxGxRxH = acc / jnp.where(empty, 1.0, l)[..., None]
    lse_BxKxGxR = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
    return None, (jnp.einsum("BKGRH->BRKGH", out_BxKxGxRxH), lse_BxKxGxR)

  _, (out, lse) = jax.lax.scan(q_step, None, (q_t, rows))
  return out, lse


def _backward(q_t, k_t, v_t, rows, keys, out_t, lse_t, dout_t):
  """Recomputes each tile's probabilities; returns fp32 dq, dk, dv tiles."""
  q_t, k_t, v_t, rows, keys, out_t, lse_t, dout_t = _loop_variant(
      q_t, k_t, v_t, rows, keys, out_t, lse_t, dout_t)
  scale = q_t.shape[-1] ** -0.5

  def q_step(dkv, q_in):
    q_BxRxKxGxH, row, out, lse_BxKxGxR, dout = q_in
    dout_BxRxKxGxH = dout.astype(jnp.float32)
    delta_BxKxGxR = jnp.einsum("BRKGH,BRKGH->BKGR", dout_BxRxKxGxH, out.astype(jnp.float32))

    def k_step(dq_BxRxKxGxH, k_in):
      k_BxSxKxH, v_BxSxKxH, key = k_in
      mask_BxRxS = _tile_mask(row, key)

      def grads(dq_BxRxKxGxH):
        s = _scores(q_BxRxKxGxH, k_BxSxKxH, mask_BxRxS)
        p_BxKxGxRxS = jnp.exp(s - lse_BxKxGxR[..., None]) * mask_BxRxS[:, None, None]
        dv_BxSxKxH = jnp.einsum("BKGRS,BRKGH->BSKH", p_BxKxGxRxS, dout_BxRxKxGxH)
        dp = jnp.einsum("BRKGH,BSKH->BKGRS", dout_BxRxKxGxH, v_BxSxKxH.astype(jnp.float32))
        ds_BxKxGxRxS = p_BxKxGxRxS * (dp - delta_BxKxGxR[..., None]) * scale
        dq_BxRxKxGxH = dq_BxRxKxGxH + jnp.einsum(
            "BKGRS,BSKH->BRKGH", ds_BxKxGxRxS, k_BxSxKxH.astype(jnp.float32))
        dk_BxSxKxH = jnp.einsum("BKGRS,BRKGH->BSKH", ds_BxKxGxRxS,
                                q_BxRxKxGxH.astype(jnp.float32))
        return dq_BxRxKxGxH, dk_BxSxKxH, dv_BxSxKxH

      def skip(dq_BxRxKxGxH):
        zeros = jnp.zeros(k_BxSxKxH.shape, jnp.float32)
        return dq_BxRxKxGxH, zeros, zeros

      dq, dk, dv = jax.lax.cond(jnp.any(mask_BxRxS), grads, skip, dq_BxRxKxGxH)
      return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(k_step, jnp.zeros(q_BxRxKxGxH.shape, jnp.float32),
                                (k_t, v_t, keys))
    return (dkv[0] + dk, dkv[1] + dv), dq

  zeros = jnp.zeros(k_t.shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(q_step, (zeros, zeros), (q_t, rows, out_t, lse_t, dout_t))
  return dq, dk, dv


@jax.custom_vjp
def _tiled_attention(q_t, k_t, v_t, rows, keys):
  """q_t [nq, B, cq, K, G, H]; k_t, v_t [nk, B, ck, K, H] -> out like q_t (v dtype).

  rows: (limit, seg) each [nq, B, cq]; keys: (group, seg) each [nk, B, ck].
  """
  out, _ = _forward(q_t, k_t, v_t, rows, keys)
  return out.astype(v_t.dtype)


def _tiled_fwd(q_t, k_t, v_t, rows, keys):
  out, lse = _forward(q_t, k_t, v_t, rows, keys)
  out = out.astype(v_t.dtype)
  return out, (q_t, k_t, v_t, rows, keys, out, lse)


def _tiled_bwd(res, dout_t):
  q_t, k_t, v_t, rows, keys, out, lse = res
  dq, dk, dv = _backward(q_t, k_t, v_t, rows, keys, out, lse, dout_t)
  no_grad = (None, None)  # integer row/key ids
  return (dq.astype(q_t.dtype), dk.astype(k_t.dtype), dv.astype(v_t.dtype),
          no_grad, no_grad)


_tiled_attention.defvjp(_tiled_fwd, _tiled_bwd)
