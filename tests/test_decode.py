"""Group decoding: cache == recompute, exact log-prob, batch invariance, EOS, meshes."""

import functools

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest
from flax.linen import meta
from jax.sharding import NamedSharding, PartitionSpec as P

from a3_jax.decoding import group as decode
from a3_jax.config import get_preset
from a3_jax.model import A3LM, init_params
from a3_jax.decoding.sampling import SamplerConfig

# Larger init than the preset: peaked distributions, so 1e-6 differences between
# the cached and recomputed logits cannot flip a sample.
CFG = get_preset("tiny", init_std=0.5, query_init_scale=0.5)
B, T = 8, 16


@pytest.fixture(scope="module")
def params():
  return meta.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0)))


def _layout():
  """Eight rows with different schedules: continuation, infilling, unsorted ids
  with gaps, trailing padding, no known tokens."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  known = np.zeros((B, T), bool)
  known[0, :4] = True
  known[1, :3] = known[1, -3:] = True
  known[2, [0, 5, 9]] = True
  known[4:, :2] = True
  groups = decode.schedule(known, order="l2r", group_size=1)
  groups[1] = decode.schedule(known[1:2], order="random", group_size=3, seed=5)[0]
  blanks = ~known[2]
  groups[2, blanks] = rng.choice([2, 5, 9, 11], size=blanks.sum())
  groups[2, -2:] = -1
  groups[4:] = decode.schedule(known[4:], order="random", group_size=2, seed=1)
  groups[5, -4:] = -1
  return tokens, groups


_apply = jax.jit(A3LM(CFG).apply)


def _teacher_forced(params, tokens, groups):
  """log p(returned tokens | returned grouping) from one A3LM.__call__ pass."""
  seg = (groups >= 0).astype(np.int32)
  logits = _apply(params, tokens, np.maximum(groups, 0), seg)["query"]
  logp = jax.nn.log_softmax(np.asarray(logits), axis=-1)
  lp = np.take_along_axis(np.asarray(logp), tokens[..., None], axis=-1)[..., 0]
  return np.where(groups > 0, lp, 0.0).sum(axis=1)


class _Forms(dict):
  """The layout decoded in each form, on first use (each form is one compile)."""

  def __init__(self, params, tokens, groups):
    super().__init__()
    self.params, self.tokens, self.groups = params, tokens, groups

  def __missing__(self, form):
    self[form] = jax.device_get(decode.decode_groups(
        self.params, CFG, self.tokens, self.groups, sampler=SamplerConfig(temperature=1.0),
        seed=3, form=form))
    return self[form]


@pytest.fixture(scope="module")
def decoded(params):
  tokens, groups = _layout()
  return tokens, groups, _Forms(params, tokens, groups)


@st.composite
def _schedules(draw):
  """(tokens, groups) [B, T]: per row a random known subset (row 0: 5-8 tokens, so the
  prefill buffer is 8 as in _layout), trailing padding (-1), and the blanks in a random
  order cut into groups of 1-5 with unsorted, gapped ids. With max_group_size=5 every
  draw shares the compiled decoders of the `decoded` fixture."""
  groups = np.full((B, T), -1, np.int32)
  for b in range(B):
    valid = T - (0 if b == 0 else draw(st.integers(0, 4)))
    order = draw(st.permutations(range(valid)))
    n_known = draw(st.integers(5, 8) if b == 0 else st.integers(0, 8))
    groups[b, order[:n_known]] = 0
    blanks, gid = list(order[n_known:]), 0
    while blanks:
      size = draw(st.integers(1, 5))
      gid += draw(st.integers(1, 3))
      groups[b, blanks[:size]] = gid
      blanks = blanks[size:]
  tokens = np.random.default_rng(draw(st.integers(0, 2**16))).integers(
      0, CFG.vocab_size, (B, T)).astype(np.int32)
  return tokens, groups


@hypothesis.settings(max_examples=6)
@hypothesis.given(schedule=_schedules(), seed=st.integers(0, 2**16))
@hypothesis.example(schedule=_layout(), seed=3)
def test_cached_equals_uncached(params, schedule, seed):
  """The KV-cached decoder samples exactly what re-running the content stream every
  step samples, and reports the teacher-forced log-prob of what it sampled."""
  tokens, groups = schedule
  out = {form: jax.device_get(decode.decode_groups(
      params, CFG, tokens, groups, sampler=SamplerConfig(temperature=1.0), seed=seed,
      form=form, max_group_size=5)) for form in ("cached", "uncached")}
  for field in out["cached"]._fields:
    chex.assert_shape(getattr(out["cached"], field), getattr(out["uncached"], field).shape)
  np.testing.assert_array_equal(out["cached"].tokens, out["uncached"].tokens)
  np.testing.assert_array_equal(out["cached"].groups, out["uncached"].groups)
  chex.assert_trees_all_close(out["cached"].logprob, out["uncached"].logprob, atol=1e-4)
  r = out["cached"]
  chex.assert_trees_all_close(r.logprob, _teacher_forced(params, r.tokens, r.groups), atol=1e-4)


@pytest.mark.slow
def test_recompute_conditions_on_one_merged_group(decoded):
  """The authors' form samples from other conditionals: same schedule, other tokens."""
  _, _, out = decoded
  np.testing.assert_array_equal(out["cached"].groups, out["recompute"].groups)
  assert (out["cached"].tokens != out["recompute"].tokens).any()


@pytest.mark.parametrize("form", ["cached", pytest.param("recompute", marks=pytest.mark.slow)])
def test_logprob_is_teacher_forced_likelihood(params, decoded, form):
  _, _, out = decoded
  r = out[form]
  np.testing.assert_allclose(r.logprob, _teacher_forced(params, r.tokens, r.groups), atol=1e-4)


def test_known_kept_and_schedule_followed(decoded):
  tokens, groups, out = decoded
  r = out["cached"]
  known = groups == 0
  np.testing.assert_array_equal(r.tokens[known], tokens[known])
  np.testing.assert_array_equal(r.groups == 0, known)
  np.testing.assert_array_equal(r.groups < 0, groups < 0)
  np.testing.assert_array_equal(r.length, T)
  for b in range(B):
    blank = groups[b] > 0
    # The g-th distinct scheduled id of a row is committed at step g.
    rank = np.searchsorted(np.unique(groups[b, blank]), groups[b, blank]) + 1
    np.testing.assert_array_equal(r.groups[b, blank], rank)


def test_batch_invariance(params, decoded):
  tokens, groups, out = decoded
  row = 2
  alone = decode.decode_groups(params, CFG, tokens[row:row + 1], groups[row:row + 1],
                               seed=3, row_ids=[row])
  np.testing.assert_array_equal(alone.tokens[0], out["cached"].tokens[row])
  np.testing.assert_array_equal(alone.groups[0], out["cached"].groups[row])
  np.testing.assert_allclose(alone.logprob[0], out["cached"].logprob[row], atol=1e-4)


def test_seed_changes_sample(params, decoded):
  tokens, groups, out = decoded
  other = decode.decode_groups(params, CFG, tokens, groups, seed=4)
  assert (np.asarray(other.tokens) != out["cached"].tokens).any()


def test_eos_stops_left_to_right_rows(params, decoded):
  _, layout_groups, _ = decoded
  known = np.zeros((B, T), bool)
  known[:, :3] = True
  tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  groups = decode.schedule(known, order="l2r", group_size=2)
  run = functools.partial(decode.decode_groups, params, CFG, tokens, groups,
                          sampler=SamplerConfig(temperature=0.0),
                          max_group_size=decode.largest_group(layout_groups))
  free = jax.device_get(run())
  eos = int(free.tokens[0, 8])
  out = jax.device_get(run(eos_id=eos, pad_id=7))
  for b in range(B):
    hits = np.flatnonzero(free.tokens[b, 3:] == eos)
    stop = T - 1 if hits.size == 0 else 3 + hits[0]
    assert out.length[b] == stop + 1
    np.testing.assert_array_equal(out.tokens[b, :stop + 1], free.tokens[b, :stop + 1])
    np.testing.assert_array_equal(out.groups[b, :stop + 1], free.groups[b, :stop + 1])
    # After EOS: padding, including the position that shared EOS's group.
    assert (out.groups[b, stop + 1:] == -1).all() and (out.tokens[b, stop + 1:] == 7).all()
  np.testing.assert_allclose(out.logprob, _teacher_forced(params, out.tokens, out.groups),
                             atol=1e-4)


def test_eos_in_any_order_is_exact(params, decoded):
  tokens, groups, out = decoded
  free = out["cached"]
  eos = int(np.bincount(free.tokens[groups > 0]).argmax())  # a token the model emits
  r = jax.device_get(decode.decode_groups(params, CFG, tokens, groups, seed=3, eos_id=eos))
  stopped = r.length < T
  assert stopped.any()
  for b in np.flatnonzero(stopped):
    e = r.length[b] - 1
    assert r.tokens[b, e] == eos and r.groups[b, e] > 0
    assert (r.groups[b, :e][groups[b, :e] >= 0] >= 0).all(), "every position before EOS filled"
    last_step = r.groups[b].max()
    assert not (r.groups[b, e + 1:] == last_step).any(), "same-step tokens after EOS dropped"
  np.testing.assert_allclose(r.logprob, _teacher_forced(params, r.tokens, r.groups), atol=1e-4)


def test_decodes_on_an_8_device_mesh(params, decoded):
  tokens, groups, out = decoded
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, P("data"))
  with jax.set_mesh(mesh):
    sharded = decode.decode_groups(
        jax.device_put(params, NamedSharding(mesh, P())), CFG,
        jax.device_put(tokens, rows), jax.device_put(groups, rows),
        sampler=SamplerConfig(temperature=1.0), seed=3)
  assert sharded.tokens.sharding.spec[0] == "data"
  np.testing.assert_array_equal(sharded.tokens, out["cached"].tokens)
  np.testing.assert_array_equal(sharded.groups, out["cached"].groups)
  np.testing.assert_allclose(sharded.logprob, out["cached"].logprob, atol=1e-4)


def test_bad_inputs(params):
  known = np.zeros((1, 4), bool)
  with pytest.raises(ValueError, match="group size"):
    decode.schedule(known, group_size=0)
  with pytest.raises(ValueError, match="unknown order"):
    decode.schedule(known, order="r2l")
  long = np.zeros((1, CFG.max_seq_len + 1), np.int32)
  with pytest.raises(ValueError, match="longer than the model's maximum"):
    decode.decode_groups(params, CFG, long, np.ones_like(long))
  with pytest.raises(ValueError, match="unknown decoding form"):
    decode.decode_groups(params, CFG, np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32),
                         form="fast")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    decode.decode_groups(params, CFG, np.full((1, 4), CFG.vocab_size, np.int32),
                         np.zeros((1, 4), np.int32))
  with pytest.raises(ValueError, match="pad_id -1 is outside the vocabulary"):
    decode.decode_groups(params, CFG, np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32),
                         pad_id=-1)


def test_cached_decoding_of_a_model_trained_with_remat(params, decoded):
  """remat is a training setting a run's config carries into its export; the cached
  decoder (no backward pass) must decode such a model exactly as without it."""
  tokens, groups, forms = decoded
  got = jax.device_get(decode.decode_groups(
      params, CFG.replace(remat="full"), tokens, groups, sampler=SamplerConfig(temperature=1.0),
      seed=3, form="cached"))
  np.testing.assert_array_equal(got.tokens, forms["cached"].tokens)
