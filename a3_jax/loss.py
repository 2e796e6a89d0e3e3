"""The grouped A3 loss: unshifted cross-entropy on the query stream.

The query row at position i predicts x_i itself from the tokens of earlier
groups, so the sum over positions is -log p(x) of the grouping, exactly. On
fine-tuning rows (roles, a3_jax/roles.py) only response tokens outside group 0
count: the sum is -log p(response | prompt) of the grouping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from a3_jax.grouping import first_group_mask
from a3_jax.roles import RESPONSE


def token_logprobs(logits_BxTxV, targets_BxT):
  """log p(target) at every position, fp32 [B, T]."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]


def loss_weights(groups_BxT, seg_BxT, count_first_group: bool = True, roles_BxT=None):
  """1.0 where a position counts in the loss: not padding, and (optionally) not
  in its document's first group, which is predicted from nothing. With roles: a
  response token outside group 0 (grouping.response_groups), nothing else."""
  if roles_BxT is not None:
    return ((roles_BxT == RESPONSE) & (groups_BxT > 0) & (seg_BxT != 0)).astype(jnp.float32)
  weights = seg_BxT != 0
  if not count_first_group:
    weights = weights & ~first_group_mask(groups_BxT, seg_BxT)
  return weights.astype(jnp.float32)


def next_token_weights(seg_BxT, roles_BxT=None):
  """[B, T-1]: 1.0 where the causal (content-stream) prediction of token t+1 from
  position t counts: the target shares the segment; with roles, it is a response token."""
  weights = (seg_BxT[:, 1:] == seg_BxT[:, :-1]) & (seg_BxT[:, 1:] != 0)
  if roles_BxT is not None:
    weights &= roles_BxT[:, 1:] == RESPONSE
  return weights.astype(jnp.float32)


def grouped_nll(logits_BxTxV, tokens_BxT, weights_BxT, z_loss: float = 0.0):
  """Summed statistics of the grouped cross-entropy.

  Returns a dict of scalars: nll (summed), count (tokens counted), correct
  (argmax hits), z (summed z-loss term, 0 when z_loss == 0).
  """
  logits = logits_BxTxV.astype(jnp.float32)
  lse_BxT = jax.nn.logsumexp(logits, axis=-1)
  target_BxT = jnp.take_along_axis(logits, tokens_BxT[..., None], axis=-1)[..., 0]
  nll_BxT = lse_BxT - target_BxT
  hit_BxT = (jnp.argmax(logits, axis=-1) == tokens_BxT).astype(jnp.float32)
  return {
      "nll": jnp.sum(nll_BxT * weights_BxT),
      "count": jnp.sum(weights_BxT),
      "correct": jnp.sum(hit_BxT * weights_BxT),
      "z": z_loss * jnp.sum(jnp.square(lse_BxT) * weights_BxT),
  }
