"""Grouping strategies, mixtures and curricula."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a3_jax.grouping import (first_group_mask, parse_curriculum, parse_strategy,
                             sample_groups, stage_groups)


def _packed(b=6, doc_lengths=(7, 12, 5), pad=4):
  """Rows holding several documents then padding: (seg, pos) [B, T]."""
  seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(doc_lengths)] + [np.zeros(pad)])
  pos = np.concatenate([np.arange(n) for n in doc_lengths] + [np.zeros(pad)])
  return np.tile(seg, (b, 1)).astype(np.int32), np.tile(pos, (b, 1)).astype(np.int32)


def test_ar_and_block_follow_positions_within_documents():
  seg, pos = _packed()
  np.testing.assert_array_equal(sample_groups(parse_strategy("ar"), None, seg, pos), pos)
  np.testing.assert_array_equal(sample_groups(parse_strategy("block:4"), None, seg, pos), pos // 4)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_perm_cuts_a_random_order_of_each_document_into_groups_of_k(k):
  seg, pos = _packed()
  groups = np.asarray(sample_groups(parse_strategy(f"perm:{k}"), jax.random.key(0), seg, pos))
  for row in range(seg.shape[0]):
    for doc in (1, 2, 3):
      g = groups[row][seg[row] == doc]
      sizes = collections.Counter(g.tolist())
      n = len(g)
      assert sorted(sizes) == list(range(-(-n // k)))  # ids 0..ceil(n/k)-1
      assert all(sizes[i] == k for i in range(n // k))  # full groups of k, the last may be short
  assert len({tuple(r) for r in groups}) > 1, "rows must get independent orders"
  again = np.asarray(sample_groups(parse_strategy(f"perm:{k}"), jax.random.key(0), seg, pos))
  np.testing.assert_array_equal(groups, again)


def test_mixture_rows_follow_one_part_each_with_the_given_weights():
  seg, pos = _packed(b=400)
  strategy = parse_strategy("mix:ar=0.25,block:4=0.75")
  groups = np.asarray(sample_groups(strategy, jax.random.key(1), seg, pos))
  is_ar = (groups == pos).all(axis=1)
  is_block = (groups == pos // 4).all(axis=1)
  assert np.all(is_ar ^ is_block)
  assert 0.18 < is_ar.mean() < 0.32


def test_first_group_mask_marks_each_documents_smallest_group():
  seg = np.array([[1, 1, 1, 2, 2, 2, 0]], np.int32)
  groups = np.array([[5, 3, 3, 9, 1, 2, 0]], np.int32)
  expected = [[False, True, True, False, True, False, True]]
  np.testing.assert_array_equal(first_group_mask(groups, seg), expected)


def test_curriculum_parses_stages_and_mixtures():
  cur = parse_curriculum("ar:300,block:2:200,mix:perm:8=0.5,block:8=0.5:400,perm:4:300")
  assert [(s.name, n) for s, n in cur.stages] == [
      ("ar", 300), ("block:2", 200), ("mix:perm:8=0.5,block:8=0.5", 400), ("perm:4", 300)]
  assert cur.total_steps == 1200
  assert [cur.stage_name(s) for s in (0, 299, 300, 500, 899, 900, 10**6)] == [
      "ar", "ar", "block:2", "mix:perm:8=0.5,block:8=0.5", "mix:perm:8=0.5,block:8=0.5",
      "perm:4", "perm:4"]


def test_switching_stages_does_not_recompile():
  cur = parse_curriculum("ar:2,block:2:2,perm:4:2")
  seg, pos = _packed(b=2)
  fn = jax.jit(lambda step, key: stage_groups(cur, cur.stage_index(step), key, seg, pos))
  outs = [np.asarray(fn(jnp.int32(step), jax.random.key(0))) for step in range(6)]
  assert fn._cache_size() == 1
  np.testing.assert_array_equal(outs[0], pos)
  np.testing.assert_array_equal(outs[2], pos // 2)
  assert not np.array_equal(outs[4], pos // 4)


@pytest.mark.parametrize("spec, message", [
    ("foo", "unknown grouping strategy 'foo'"),
    ("block:0", "group size"),
    ("perm:x", "group size"),
    ("mix:ar,perm:4=1", "needs a positive weight"),
    ("mix:ar=-1", "needs a positive weight"),
])
def test_bad_strategy_names_raise(spec, message):
  with pytest.raises(ValueError, match=message):
    parse_strategy(spec)


@pytest.mark.parametrize("spec", ["", "ar", "ar:x", "ar:0", "ar:10,bogus:3"])
def test_malformed_curricula_raise(spec):
  with pytest.raises(ValueError):
    parse_curriculum(spec)
