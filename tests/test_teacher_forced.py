"""The one teacher-forced pass (teacher_forced.score_items) against brute force: each
scored token by its own run of the model on exactly what it may see."""

import jax
import numpy as np
import pytest
from flax.linen import meta

from a3_jax import teacher_forced
from a3_jax.config import get_preset
from a3_jax.model import A3LM, init_params

CFG = get_preset("tiny", init_std=0.3, query_init_scale=0.3)


@pytest.fixture(scope="module")
def params():
  return meta.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(3)))


WIDTH = 32  # every brute-force pass padded to one shape: one compile


@jax.jit
def _logits_padded(params, tokens, groups, seg, pos):
  return A3LM(CFG).apply(params, tokens, groups, seg, pos)


def _logits(params, tokens, groups, pos):
  """Both heads' logits [n, V] of one unpadded row."""
  n = len(tokens)
  pad = lambda x: np.pad(np.asarray(x, np.int32), (0, WIDTH - n))[None]
  out = _logits_padded(params, pad(tokens), pad(groups), pad(np.ones(n)), pad(pos))
  return {k: v[0, :n] for k, v in out.items()}


def _brute_force(params, item, head):
  """log p of each scored token from a pass over only the tokens it conditions on
  (query: the tokens of groups below its own, and itself alone in its group with a
  scrambled value; content: the tokens before it, read off the content stream at i-1)."""
  out = []
  for i in np.flatnonzero(item.scored):
    if head == "content":
      if i == 0:
        out.append(0.0)
        continue
      keep = np.arange(i)
      logits = _logits(params, item.tokens[:i], keep, keep)["content"]
      out.append(float(jax.nn.log_softmax(logits[-1])[item.tokens[i]]))
      continue
    keep = np.append(np.flatnonzero(item.groups < item.groups[i]), i)
    tokens = item.tokens[keep].copy()
    tokens[-1] = (tokens[-1] + 1) % CFG.vocab_size  # its own value must not matter
    groups, pos = item.groups[keep], item.positions[keep]  # the earlier groups keep theirs
    logits = _logits(params, tokens, groups, pos)["query"]
    out.append(float(jax.nn.log_softmax(logits[-1])[item.tokens[i]]))
  return np.asarray(out)


def _items(rng):
  """Items of unequal length: shuffled positions, random groups with ties, random
  scored subsets (first-group tokens included: predicted from nothing)."""
  items = []
  for n in (3, 11, 6, 17):
    pos = rng.permutation(24)[:n].astype(np.int32)
    groups = rng.integers(0, 5, n).astype(np.int32)
    scored = rng.random(n) < 0.6
    scored[rng.integers(n)] = True
    items.append(teacher_forced.Item(rng.integers(0, CFG.vocab_size, n).astype(np.int32),
                                     groups, pos, scored))
  return items


def test_query_scores_equal_brute_force_per_group(params):
  # Brute force is one row at a time, so this also says that padding and the other
  # items of a pass change nothing.
  items = _items(np.random.default_rng(0))
  got = teacher_forced.score_items(params, CFG, items, batch_size=3)
  for item, (lp, hit) in zip(items, got):
    np.testing.assert_allclose(lp, _brute_force(params, item, "query"), rtol=1e-5, atol=1e-4)
    assert lp.shape == hit.shape == (int(item.scored.sum()),)


def test_content_scores_equal_brute_force_prefixes(params):
  rng = np.random.default_rng(1)
  items = []
  for n in (5, 13):
    scored = rng.random(n) < 0.7
    scored[0] = True  # nothing predicts position 0: log p 0, never a hit
    items.append(teacher_forced.Item(rng.integers(0, CFG.vocab_size, n).astype(np.int32),
                                     np.arange(n, dtype=np.int32), np.arange(n), scored))
  got = teacher_forced.score_items(params, CFG, items, head="content", batch_size=2)
  for item, (lp, hit) in zip(items, got):
    np.testing.assert_allclose(lp, _brute_force(params, item, "content"), rtol=1e-5, atol=1e-4)
    assert lp[0] == 0.0 and not hit[0]


def test_padding_rule():
  assert [teacher_forced.padded_width(n, 64) for n in (0, 1, 8, 9, 33, 64)] == [
      8, 8, 8, 16, 64, 64]
  assert teacher_forced.padded_width(70, 64) == 70  # never below n
