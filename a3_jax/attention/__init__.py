"""Grouped two-stream attention: one visibility rule (`rule`), three implementations.

- `einsum`: dense masked scores, the reference;
- `chunked`: online softmax over tiles with a recomputing VJP (memory linear in T);
- `kernel`: tokens in generation order so uniform groups become static block
  masks (splash attention on TPU, `jax.nn.dot_product_attention` elsewhere),
  falling back to `chunked` inside the step for rows whose groups are not blocks.

`attend` is the single dispatch; the model never names an implementation module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from a3_jax.attention import chunked, einsum, kernel
from a3_jax.attention.rule import visibility

IMPLEMENTATIONS = ("einsum", "chunked", "kernel")

__all__ = ["IMPLEMENTATIONS", "attend", "kernel_applies", "visibility"]


def kernel_applies(key_group_BxS, key_seg_BxS, group_size: int):
  """Scalar bool: `attend("kernel", ..., teacher_forced=True)` runs the block kernel on
  this batch (every row's groups are blocks of `group_size`); else it falls back to
  `chunked` for the whole batch."""
  return jnp.all(kernel.block_aligned(key_group_BxS, key_seg_BxS, group_size))


def attend(impl: str, q_BxRxNxH, k_BxSxKxH, v_BxSxKxH, row_limit_BxR, row_seg_BxR,
           key_group_BxS, key_seg_BxS, *, chunk: int = 512, group_size: int = 1,
           teacher_forced: bool = False):
  """Attention of rows q over keys k/v under the visibility rule; returns [B, R, N, H].

  `kernel` applies only to a teacher-forced two-stream pass (`teacher_forced`:
  the keys are exactly the T content rows, which are also q's first T rows,
  followed by their T query rows); elsewhere (a decoding step against a cache)
  it means `chunked`. Its static masks hold when every row's groups are blocks
  of `group_size`; a batch where any row's are not takes `chunked` (`lax.cond`).
  """
  args = (q_BxRxNxH, k_BxSxKxH, v_BxSxKxH, row_limit_BxR, row_seg_BxR,
          key_group_BxS, key_seg_BxS)
  if impl == "einsum":
    return einsum.einsum_attention(*args)
  if impl not in ("chunked", "kernel"):
    raise ValueError(f"unknown attention implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
  general = lambda: chunked.chunked_attention(*args, chunk=chunk)
  if impl == "chunked" or not teacher_forced:
    return general()
  blocks = lambda: kernel.two_stream_attention(q_BxRxNxH, k_BxSxKxH, v_BxSxKxH, key_group_BxS,
                                               key_seg_BxS, group_size=group_size)
  return jax.lax.cond(kernel_applies(key_group_BxS, key_seg_BxS, group_size), blocks, general)
