"""Dynamic resampling: cached == uncached, both forms against a brute-force loop,
exact log-probs, criteria, semi-AR blocks, batch invariance."""

import functools

import jax
import numpy as np
import pytest
from flax.linen import meta

from a3_jax.decoding import dynamic as decode_dynamic
from a3_jax.config import get_preset
from a3_jax.decoding.dynamic import CRITERIA
from a3_jax.model import A3LM, init_params
from a3_jax.decoding.sampling import SamplerConfig

# Peaked distributions (see test_decode.py): no near-ties between scores.
CFG = get_preset("tiny", init_std=0.5, query_init_scale=0.5)
B, T = 4, 14
GREEDY = SamplerConfig(temperature=0.0)


@pytest.fixture(scope="module")
def params():
  return meta.unbox(init_params(CFG, jax.random.key(0)))


@pytest.fixture(scope="module")
def apply():
  return jax.jit(A3LM(CFG).apply)


def _layout():
  """Continuation, infilling, scattered known tokens with padding.

  (A row with nothing known is degenerate here: every first-step query row sees
  no key, so all blanks tie on every criterion at the first step and nearly tie
  after it, and 1e-6 float differences decide the order.)
  """
  tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  known = np.zeros((B, T), bool)
  valid = np.ones((B, T), bool)
  known[0, :4] = True
  known[1, :3] = known[1, -3:] = True
  known[2, [1, 6, 7]] = True
  valid[2, -3:] = False
  known[3, [0, 9]] = True
  return tokens, known, valid


def _teacher_forced(apply, params, tokens, groups):
  seg = (groups >= 0).astype(np.int32)
  logits = apply(params, tokens, np.maximum(groups, 0), seg)["query"]
  lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)), tokens[..., None],
                          axis=-1)[..., 0]
  return np.where(groups > 0, lp, 0.0).sum(axis=1)


def _brute_force(apply, params, tokens, known, valid, n, merged):
  """Greedy confidence decoding, one full A3LM pass per step, per row.

  merged=False: tokens committed at step t are group t (exact A3); True: every
  committed token is in group 0 (the authors' recompute).
  """
  toks, groups = np.where(known, tokens, 0), np.where(known, 0, -1)
  groups[~valid] = -1
  for b in range(B):
    step = 1
    while ((groups[b] < 0) & valid[b]).any():
      blank = (groups[b] < 0) & valid[b]
      committed = groups[b] >= 0
      g = np.where(committed, 0 if merged else groups[b], step)  # blanks: the query targets
      logits = apply(params, toks[b:b + 1], g[None], valid[b:b + 1].astype(np.int32))["query"]
      probs = np.asarray(jax.nn.softmax(logits[0], axis=-1))
      conf = np.where(blank, probs.max(-1), -np.inf)
      for i in np.argsort(-conf, kind="stable")[:min(n, blank.sum())]:
        toks[b, i], groups[b, i] = probs[i].argmax(), step
      step += 1
  return toks, groups


@pytest.fixture(scope="module")
def run(params):
  tokens, known, valid = _layout()
  return functools.partial(decode_dynamic.decode_dynamic, params, CFG, tokens, known,
                           valid_BxT=valid, commit_per_step=2, seed=5)


@pytest.mark.parametrize("criterion", [  # 'threshold' has its own compile
    c if c != "threshold" else pytest.param(c, marks=pytest.mark.slow) for c in CRITERIA])
def test_cached_equals_uncached(apply, params, run, criterion):
  out = {form: jax.device_get(run(criterion=criterion, threshold=0.5, form=form))
         for form in ("cached", "uncached")}
  np.testing.assert_array_equal(out["cached"].tokens, out["uncached"].tokens)
  np.testing.assert_array_equal(out["cached"].groups, out["uncached"].groups)
  np.testing.assert_allclose(out["cached"].logprob, out["uncached"].logprob, atol=1e-4)
  r = out["cached"]
  np.testing.assert_allclose(r.logprob, _teacher_forced(apply, params, r.tokens, r.groups),
                             atol=1e-4)


@pytest.mark.parametrize("form,merged", [("cached", False), ("recompute", True)])
def test_matches_brute_force(apply, params, run, form, merged):
  tokens, known, valid = _layout()
  want_tokens, want_groups = _brute_force(apply, params, tokens, known, valid, 2, merged)
  r = jax.device_get(run(sampler=GREEDY, form=form))
  np.testing.assert_array_equal(r.groups, want_groups)
  np.testing.assert_array_equal(np.where(r.groups >= 0, r.tokens, 0), want_tokens)
  np.testing.assert_array_equal(r.tokens[known & valid], tokens[known & valid])
  np.testing.assert_allclose(r.logprob, _teacher_forced(apply, params, r.tokens, r.groups),
                             atol=1e-4)


def test_commits_per_step(run):
  _, known, valid = _layout()
  r = jax.device_get(run(criterion="random"))
  for b in range(B):
    counts = np.bincount(r.groups[b][r.groups[b] > 0])[1:]
    blanks = (valid[b] & ~known[b]).sum()
    np.testing.assert_array_equal(counts, [2] * (blanks // 2) + [1] * (blanks % 2))


@pytest.mark.slow
def test_threshold_extremes(run):
  _, known, valid = _layout()
  blank = valid & ~known
  everything = jax.device_get(run(criterion="threshold", threshold=0.0))
  assert (everything.groups[blank] == 1).all()
  one_by_one = jax.device_get(run(criterion="threshold", threshold=1.0))
  for b in range(B):
    assert sorted(one_by_one.groups[b][blank[b]]) == list(range(1, blank[b].sum() + 1))


def test_blocks_are_filled_left_to_right(apply, params, run):
  _, known, valid = _layout()
  r = jax.device_get(run(block_size=3, criterion="confidence"))
  for b in range(B):
    steps = r.groups[b][valid[b] & ~known[b]]
    blocks = [steps[i:i + 3] for i in range(0, len(steps), 3)]
    for left, right in zip(blocks, blocks[1:]):
      assert left.max() < right.min()
  np.testing.assert_allclose(r.logprob, _teacher_forced(apply, params, r.tokens, r.groups),
                             atol=1e-4)


@pytest.mark.slow
def test_batch_invariance(params, run):
  tokens, known, valid = _layout()
  batch = jax.device_get(run(criterion="random"))
  alone = decode_dynamic.decode_dynamic(params, CFG, tokens[1:2], known[1:2],
                                        valid_BxT=valid[1:2], commit_per_step=2, seed=5,
                                        criterion="random", row_ids=[1])
  np.testing.assert_array_equal(alone.tokens[0], batch.tokens[1])
  np.testing.assert_array_equal(alone.groups[0], batch.groups[1])
  np.testing.assert_allclose(alone.logprob[0], batch.logprob[1], atol=1e-4)


def test_eos_is_exact(apply, params, run):
  free = jax.device_get(run())
  _, known, _ = _layout()
  eos = int(np.bincount(free.tokens[free.groups > 0]).argmax())
  r = jax.device_get(run(eos_id=eos))
  assert (r.length < T).any()
  np.testing.assert_allclose(r.logprob, _teacher_forced(apply, params, r.tokens, r.groups),
                             atol=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(criterion="surprise"), "unknown criterion"),
    (dict(commit_per_step=0), "commit_per_step"),
    (dict(form="fast"), "unknown decoding form"),
    (dict(criterion="threshold", threshold=1.5), "threshold"),
    (dict(block_size=-1), "block_size"),
])
def test_bad_inputs(run, kwargs, message):
  with pytest.raises(ValueError, match=message):
    run(**kwargs)
