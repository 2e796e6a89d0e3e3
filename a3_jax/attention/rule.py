"""The visibility rule every attention path (and the decoding cache) shares.

Every attention call in a3_jax is described by per-row and per-key integers
instead of a dense mask, so that memory-efficient paths can build masks tile by
tile:

  query row r sees key s  iff  key_group[s] <= row_limit[r]
                               and key_seg[s] == row_seg[r] and key_seg[s] != 0

A content-stream row of group g has row_limit = g (it sees its own group); a
query-stream row has row_limit = g - 1 (strictly earlier groups; ids are ints).
Segment 0 marks padding (or an empty cache slot): never visible.
A row that sees no key gets a zero output (never NaN, never the mean of V).
"""

from __future__ import annotations

# Kept finite so that fully masked rows give exp(0) * 0 = 0, not NaN.
MASKED = -1e30


def visibility(row_limit_BxR, row_seg_BxR, key_group_BxS, key_seg_BxS):
  """Boolean [B, R, S] mask of the rule in the module docstring."""
  group_ok = key_group_BxS[:, None, :] <= row_limit_BxR[:, :, None]
  seg_ok = (key_seg_BxS[:, None, :] == row_seg_BxR[:, :, None]) & (
      key_seg_BxS[:, None, :] != 0)
  return group_ok & seg_ok
