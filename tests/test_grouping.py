"""Grouping strategies, mixtures and curricula."""

import collections

import chex
import hypothesis
from hypothesis import strategies as st
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


@st.composite
def _layouts(draw, b=2, t=32):
  """(seg, pos) [B, T]: each row packs documents of 1-12 tokens, then padding."""
  seg, pos = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
  for row in range(b):
    start, doc = 0, 1
    while start < t:
      length = min(draw(st.integers(1, 12)), t - start)
      if draw(st.booleans()) and doc > 1:  # padding ends the row
        break
      seg[row, start:start + length] = doc
      pos[row, start:start + length] = np.arange(length)
      start, doc = start + length, doc + 1
  return seg, pos


def _doc_groups(groups, seg):
  """The group ids of each document of each row."""
  for row in range(seg.shape[0]):
    for doc in np.unique(seg[row][seg[row] > 0]):
      yield groups[row][seg[row] == doc]


@hypothesis.settings(max_examples=30)
@hypothesis.given(_layouts(), st.sampled_from(["ar", "block", "perm"]), st.integers(1, 4),
                  st.integers(0, 2**31 - 1))
def test_every_document_is_grouped_as_its_strategy_says(layout, kind, k, seed):
  seg, pos = layout
  name = "ar" if kind == "ar" else f"{kind}:{k}"
  key = jax.random.key(seed)
  groups = np.asarray(sample_groups(parse_strategy(name), key, seg, pos))
  chex.assert_shape(groups, seg.shape)
  chex.assert_type(groups, np.int32)
  if kind != "perm":  # ordered: a function of the position in the document
    real = seg > 0
    np.testing.assert_array_equal(groups[real], (pos if kind == "ar" else pos // k)[real])
    return
  for g in _doc_groups(groups, seg):
    n, sizes = len(g), collections.Counter(g.tolist())
    assert sorted(sizes) == list(range(-(-n // k)))  # ids 0..ceil(n/k)-1
    assert all(sizes[i] == k for i in range(n // k))  # full groups of k, the last may be short
  again = np.asarray(sample_groups(parse_strategy(name), key, seg, pos))
  np.testing.assert_array_equal(groups, again)


@pytest.mark.parametrize("k", [1, 3])
def test_perm_draws_an_independent_order_per_row(k):
  seg, pos = _packed()
  groups = np.asarray(sample_groups(parse_strategy(f"perm:{k}"), jax.random.key(0), seg, pos))
  assert len({tuple(r) for r in groups}) > 1, "rows must get independent orders"
  assert not np.array_equal(groups[seg > 0], (pos // k)[seg > 0]), "a random order, not blocks"


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


def test_a_causal_stage_is_a_curriculum_stage_only():
  cur = parse_curriculum("causal:3,perm:4:2")
  assert [(s.name, n) for s, n in cur.stages] == [("causal", 3), ("perm:4", 2)]
  assert cur.has_causal and not parse_curriculum("ar:3").has_causal
  assert [cur.stage(s).kind == "causal" for s in range(5)] == [True] * 3 + [False] * 2
  for spec in ("causal", "mix:causal=1,ar=1"):  # not a grouping: nothing to score
    with pytest.raises(ValueError, match="unknown grouping strategy"):
      parse_strategy(spec)


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


def test_steps_run_counts_each_stage_within_the_run():
  from a3_jax.grouping import parse_curriculum
  c = parse_curriculum("ar:10,perm:4:5")
  steps = lambda total, start=0: [n for _, n in c.steps_run(total, start)]
  assert steps(20) == [10, 10]  # the last stage runs on
  assert steps(8) == [8, 0]
  assert steps(20, start=12) == [0, 8]
  assert steps(20, start=4) == [6, 10]
