"""Speculative decoding: exactly the sequential distribution, exact log-probs, EOS, k = 1.

The distribution tests use a model with a 3-token vocabulary and a 6-position
template (known tokens at 0 and 3, four blanks), so the joint of the blanks
under every order (81 fills x 24 orders) is enumerated by brute force: one
teacher-forced pass with singleton groups per (order, fill). A chi-square test
at significance 0.001 (cells with expected count < 5 pooled) must accept the
speculative samples and reject group decoding with k = 2 (whose distribution
lies 0.29 in total variation from the sequential one on this model).
"""

import itertools

import jax
import numpy as np
import pytest
from flax.linen import meta
from scipy import stats

from a3_jax.config import get_preset
from a3_jax.decoding import group as decode, speculative as spec
from a3_jax.decoding.loop import sequence_logprob
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError
from a3_jax.model import init_params

V = 3
CFG = get_preset("tiny", vocab_size=V, d_model=32, mlp_dim=64, num_heads=2, num_kv_heads=1,
                 head_dim=16, max_seq_len=16, init_std=1.0, query_init_scale=1.0)
TEMPLATE = np.array([1, 0, 0, 2, 0, 0], np.int32)
KNOWN = np.array([1, 0, 0, 1, 0, 0], bool)
BLANKS = np.flatnonzero(~KNOWN)
FILLS = np.array(list(itertools.product(range(V), repeat=len(BLANKS))), np.int32)
ORDERS = list(itertools.permutations(range(len(BLANKS))))  # rank of each blank
ALPHA = 1e-3
_logprob = jax.jit(sequence_logprob, static_argnums=1)


@pytest.fixture(scope="module")
def params():
  return meta.unbox(init_params(CFG, jax.random.key(0)))


def _order_ids(ranks):
  ids = np.zeros(len(TEMPLATE), np.int32)
  ids[BLANKS] = np.asarray(ranks) + 1
  return ids


@pytest.fixture(scope="module")
def joint(params):
  """log p(fill | order) [orders, fills]: the sequential factorisation, brute force."""
  tokens = np.tile(TEMPLATE, (len(ORDERS) * len(FILLS), 1))
  tokens[:, BLANKS] = np.tile(FILLS, (len(ORDERS), 1))
  groups = np.repeat([_order_ids(r) for r in ORDERS], len(FILLS), axis=0)
  lp = np.asarray(_logprob(params, CFG, tokens, groups)).reshape(len(ORDERS), len(FILLS))
  np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-5)
  return lp


def _batch(n, seed=0):
  """n rows: the first half left to right, the rest in a random order per row."""
  tokens = np.tile(TEMPLATE, (n, 1))
  known = np.tile(KNOWN, (n, 1))
  order = decode.schedule(known, order="random", seed=seed)
  order[:n // 2] = decode.schedule(known[:n // 2], order="l2r")
  return tokens, order


def _cells(tokens):
  return (tokens[:, BLANKS] * V ** np.arange(len(BLANKS))[::-1]).sum(axis=1)


def _order_index(order):
  lookup = {r: i for i, r in enumerate(ORDERS)}
  return np.array([lookup[tuple(row[BLANKS] - 1)] for row in order])


def _chi_square_p(cells, expected_probs):
  """p-value of observed cells against the per-row expected distributions [N, F]."""
  observed = np.bincount(cells, minlength=expected_probs.shape[1]).astype(np.float64)
  expected = expected_probs.astype(np.float64).sum(axis=0)
  small = expected < 5
  observed = np.append(observed[~small], observed[small].sum())
  expected = np.append(expected[~small], expected[small].sum())
  if expected[-1] == 0:
    observed, expected = observed[:-1], expected[:-1]
  expected = expected * observed.sum() / expected.sum()
  statistic = np.sum((observed - expected) ** 2 / expected)
  return stats.chi2.sf(statistic, len(observed) - 1)


def _check_exact(params, joint, n, draft_sizes, seed):
  tokens, order = _batch(n, seed)
  rows = _order_index(order)
  probs = np.exp(joint[rows])
  halves = {"l2r": slice(0, n // 2), "random": slice(n // 2, n)}
  for k in draft_sizes:
    out = jax.device_get(spec.decode_speculative(params, CFG, tokens, order, draft_size=k,
                                                 seed=seed))
    cells = _cells(out.tokens)
    np.testing.assert_array_equal(out.tokens[:, KNOWN], tokens[:, KNOWN])
    np.testing.assert_array_equal(out.groups, order)  # singleton groups in sigma order
    np.testing.assert_allclose(out.logprob, joint[rows, cells], atol=2e-4)
    assert (out.calls <= len(BLANKS)).all()  # a call commits at least one token
    assert out.calls.sum() < n * len(BLANKS)  # more than one token per call on average
    for name, half in halves.items():
      p = _chi_square_p(cells[half], probs[half])
      assert p > ALPHA, (k, name, p)
  # Power: group decoding with k = 2 is another distribution, and the test sees it.
  groups = np.where(order > 0, (order + 1) // 2, order)
  grouped = jax.device_get(decode.decode_groups(params, CFG, tokens, groups, seed=seed))
  for name, half in halves.items():
    assert _chi_square_p(_cells(grouped.tokens)[half], probs[half]) < ALPHA, name


def test_matches_sequential_distribution_fast(params, joint):
  _check_exact(params, joint, n=4000, draft_sizes=(3,), seed=1)


@pytest.mark.slow
def test_matches_sequential_distribution(params, joint):
  _check_exact(params, joint, n=40000, draft_sizes=(2, 4), seed=2)


# A model with the tiny preset's vocabulary for the rest.
BIG = get_preset("tiny", init_std=0.5, query_init_scale=0.5)


@pytest.fixture(scope="module")
def big_params():
  return meta.unbox(init_params(BIG, jax.random.key(0)))


def _layout(b=6, t=16):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, BIG.vocab_size, (b, t)).astype(np.int32)
  known = np.zeros((b, t), bool)
  known[0, :4] = True
  known[1, :3] = known[1, -3:] = True
  known[2, [0, 5, 9]] = True
  known[3:, :2] = True
  order = decode.schedule(known, order="random", seed=4)
  order[:3] = decode.schedule(known[:3], order="l2r")
  order[4, -5:] = -1  # padding
  return tokens, order


def test_k1_is_sequential_cached_decoding(big_params):
  tokens, order = _layout()
  for sampler in (SamplerConfig(), SamplerConfig(temperature=0.0)):
    ref = jax.device_get(decode.decode_groups(big_params, BIG, tokens, order, sampler=sampler,
                                              seed=5))
    out = jax.device_get(spec.decode_speculative(big_params, BIG, tokens, order, draft_size=1,
                                                 sampler=sampler, seed=5))
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.groups, ref.groups)
    np.testing.assert_allclose(out.logprob, ref.logprob, atol=1e-4)
    assert (out.calls == (order > 0).sum(axis=1)).all()


def test_greedy_and_batch_invariance(big_params):
  tokens, order = _layout()
  greedy = SamplerConfig(temperature=0.0)
  ref = jax.device_get(decode.decode_groups(big_params, BIG, tokens, order, sampler=greedy))
  out = jax.device_get(spec.decode_speculative(big_params, BIG, tokens, order, draft_size=4,
                                               sampler=greedy))
  np.testing.assert_array_equal(out.tokens, ref.tokens)  # greedy target = greedy sequential
  # A row's sample depends on its row id, not its place in the batch.
  sampled = jax.device_get(spec.decode_speculative(big_params, BIG, tokens, order,
                                                   draft_size=4, seed=9))
  flipped = jax.device_get(spec.decode_speculative(
      big_params, BIG, tokens[::-1], order[::-1], draft_size=4, seed=9,
      row_ids=np.arange(len(tokens))[::-1]))
  np.testing.assert_array_equal(flipped.tokens[::-1], sampled.tokens)
  lp = _logprob(big_params, BIG, sampled.tokens, sampled.groups)
  np.testing.assert_allclose(sampled.logprob, lp, atol=1e-4)
  assert (sampled.accepted <= sampled.reached).all() and sampled.reached[:, 0].sum() == 0


def test_eos_stops_and_keeps_logprob_exact(big_params):
  tokens, order = _layout()
  first = jax.device_get(spec.decode_speculative(big_params, BIG, tokens, order,
                                                 draft_size=4, seed=3))
  eos = int(np.bincount(first.tokens[order > 0]).argmax())  # a token the model likes
  out = jax.device_get(spec.decode_speculative(big_params, BIG, tokens, order, draft_size=4,
                                               seed=3, eos_id=eos))
  stopped = out.length < tokens.shape[1]
  assert stopped.any()
  for row in np.flatnonzero(stopped):
    e = out.length[row] - 1
    assert out.tokens[row, e] == eos and order[row, e] > 0
    assert (out.groups[row, :e][order[row, :e] >= 0] >= 0).all()  # everything before: filled
    if row < 3:  # left to right: nothing after EOS is kept
      assert (out.groups[row, e + 1:] <= 0).all()
  lp = _logprob(big_params, BIG, out.tokens, out.groups)
  np.testing.assert_allclose(out.logprob, lp, atol=1e-4)


def test_bad_inputs(big_params):
  tokens, order = _layout()
  with pytest.raises(UserError, match="draft size"):
    spec.decode_speculative(big_params, BIG, tokens, order, draft_size=0)
  dup = order.copy()
  dup[0, 5] = dup[0, 6]
  with pytest.raises(UserError, match="distinct"):
    spec.decode_speculative(big_params, BIG, tokens, dup)
  with pytest.raises(UserError, match="shaped like"):
    spec.decode_speculative(big_params, BIG, tokens, order[:, :3])


def test_a_draft_larger_than_the_blanks_is_capped(params):
  """--draft_size=1000 on a prompt of 4 blanks compiles k = 4 (it once compiled for
  minutes): the same samples as draft size 4, from one compilation."""
  tokens, order = TEMPLATE[None], _order_ids(range(len(BLANKS)))[None]
  capped = jax.device_get(spec.decode_speculative(params, CFG, tokens, order, draft_size=4,
                                                  seed=2))
  huge = jax.device_get(spec.decode_speculative(params, CFG, tokens, order, draft_size=1000,
                                                seed=2))
  np.testing.assert_array_equal(huge.tokens, capped.tokens)
  np.testing.assert_array_equal(huge.calls, capped.calls)
