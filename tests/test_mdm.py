"""Masked-diffusion baseline: ELBO by hand, its variance, the loss, the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import meta

from a3_jax import mdm
from a3_jax.config import get_preset
from a3_jax.model import A3LM, init_params
from a3_jax.train.config import TrainConfig

CFG = get_preset("tiny", init_std=0.5)


@pytest.fixture(scope="module")
def params():
  return meta.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0)))


def _uniform_attention(params):
  """q = k = 0 (uniform attention over visible keys) and a zero MLP output."""
  p = params["params"]
  attn = {**p["layers"]["attn"], "q_proj": jnp.zeros_like(p["layers"]["attn"]["q_proj"]),
          "k_proj": jnp.zeros_like(p["layers"]["attn"]["k_proj"])}
  mlp = {**p["layers"]["mlp"], "down_proj": jnp.zeros_like(p["layers"]["mlp"]["down_proj"])}
  return {"params": {**p, "layers": {**p["layers"], "attn": attn, "mlp": mlp}}}


def _rms(x, scale):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + CFG.rms_eps) * scale


def numpy_bidirectional_logprobs(params, z, seg):
  """Content stream by hand, every token in group 0, for uniform-attention params;
  the mask token's probability is 0. Returns [T, V] log-probs."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
  h = p["embed"][z]
  vis = (seg[None, :] == seg[:, None]) & (seg[None, :] != 0)
  for l in range(CFG.num_layers):
    v = np.einsum("TD,DKH->TKH", _rms(h, p["layers"]["attn_norm"]["scale"][l]),
                  p["layers"]["attn"]["v_proj"][l])
    v = np.repeat(v, CFG.num_heads // CFG.num_kv_heads, axis=1)
    mean = np.einsum("ij,jNH->iNH", vis, v) / np.maximum(vis.sum(1), 1)[:, None, None]
    h = h + np.einsum("TNH,NHD->TD", mean, p["layers"]["attn"]["o_proj"][l])
  logits = _rms(h, p["final_norm"]["scale"]) @ p["lm_head"]
  logits[:, mdm.MASK_ID] = -np.inf
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def test_elbo_equals_hand_computation_with_fixed_masks(params):
  params = _uniform_attention(params)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, CFG.vocab_size, (2, 12)).astype(np.int32)
  seg = np.ones((2, 12), np.int32)
  seg[1, 9:] = 0  # padding: never seen, never masked
  masks = rng.random((3, 2, 12)) < np.asarray([0.2, 0.5, 0.9])[:, None, None]
  masks &= seg != 0
  times = np.asarray([[0.2, 0.3], [0.5, 0.6], [0.9, 0.95]])
  got = mdm.elbo_terms(params, CFG, tokens, masks, times, seg)
  for k in range(3):
    for b in range(2):
      z = np.where(masks[k, b], mdm.MASK_ID, tokens[b])
      lp = numpy_bidirectional_logprobs(params, z, seg[b])
      nll = -sum(lp[i, tokens[b, i]] for i in np.flatnonzero(masks[k, b]))
      np.testing.assert_allclose(got[k, b], nll / times[k, b], rtol=1e-5)


def test_elbo_variance_shrinks_with_samples(params):
  tokens = np.random.default_rng(1).integers(1, CFG.vocab_size, (1, 24)).astype(np.int32)

  def estimates(k, n=16):
    return np.asarray([mdm.elbo(params, CFG, tokens, num_samples=k,
                                key=jax.random.key(1000 * k + s)).mean(axis=0)[0]
                       for s in range(n)])

  one, eight = estimates(1), estimates(8)
  assert np.var(eight) < np.var(one) / 3
  # Both estimate the same bound: the means agree within a few standard errors.
  assert abs(one.mean() - eight.mean()) < 4 * np.sqrt(np.var(one) / len(one))


def test_loss_stats_is_the_elbo_of_its_own_draw(params):
  rng = np.random.default_rng(2)
  tokens = rng.integers(1, CFG.vocab_size, (4, 16)).astype(np.int32)
  seg = np.ones((4, 16), np.int32)
  seg[:, 10:] = 2
  seg[3, 13:] = 0
  pos = np.where(seg == 2, np.arange(16) - 10, np.arange(16)).astype(np.int32)
  pos[seg == 0] = 0
  batch = {"tokens": tokens, "segment_ids": seg, "positions": pos}
  key = jax.random.fold_in(jax.random.key(3), 7)
  loss_stats = jax.jit(lambda p, b, k: mdm.loss_stats(A3LM(CFG), TrainConfig(), p, b, k))
  stats = loss_stats(params, batch, key)
  assert set(stats) == {"nll", "count", "correct", "z"}
  assert float(stats["count"]) == np.sum(seg != 0)
  # The same draw, rebuilt from the key, through the evaluation path.
  time_key, mask_key = jax.random.split(key)
  t = np.asarray(mdm.stratified_times(time_key, (4,)))
  masked = (np.asarray(jax.random.uniform(mask_key, (4, 16))) < t[:, None]) & (seg != 0)
  expected = mdm.elbo_terms(params, CFG, tokens, masked[None], t[None], seg, pos)
  np.testing.assert_allclose(float(stats["nll"]), expected.sum(), rtol=1e-5)
  grads = jax.jit(jax.grad(lambda p: loss_stats(p, batch, key)["nll"]))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_stratified_times_cover_the_interval():
  t = np.asarray(mdm.stratified_times(jax.random.key(0), (8, 3)))
  assert t.shape == (8, 3) and t.min() >= mdm.T_EPS and t.max() <= 1.0
  for col in t.T:  # one draw per eighth of [0, 1)
    assert sorted(np.floor((col - mdm.T_EPS) / (1 - mdm.T_EPS) * 8).astype(int)) == list(range(8))


def test_sampler_fills_blanks_and_keeps_the_rest(params):
  rng = np.random.default_rng(4)
  tokens = rng.integers(1, CFG.vocab_size, (3, 20)).astype(np.int32)
  known = np.ones((3, 20), bool)
  known[0, 5:12] = False
  known[1, :] = False
  known[2, 15:] = False
  valid = np.ones((3, 20), bool)
  valid[2, 18:] = False
  for steps in (1, 4, 20):
    out = mdm.generate(params, CFG, tokens, known, valid, steps=steps)
    np.testing.assert_array_equal(out[known & valid], tokens[known & valid])
    assert np.all(out[valid & ~known] != mdm.MASK_ID)  # every blank committed
    np.testing.assert_array_equal(out[~valid], tokens[~valid])
  again = mdm.generate(params, CFG, tokens, known, valid, steps=4)
  np.testing.assert_array_equal(again, mdm.generate(params, CFG, tokens, known, valid, steps=4))


def test_sampler_commits_the_most_confident_first(params):
  """Two calls for six blanks: the first commits the three blanks whose greedy
  token is most probable given the fully masked input, with those tokens."""
  tokens = np.random.default_rng(5).integers(1, CFG.vocab_size, (1, 10)).astype(np.int32)
  known = np.zeros((1, 10), bool)
  known[0, :4] = True
  z = np.where(known, tokens, mdm.MASK_ID)
  logits = np.asarray(jax.jit(lambda p, z: mdm.logits(A3LM(CFG), p, z, jnp.ones_like(z),
                                                      jnp.arange(10)[None]))(params, z))[0]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  conf = (probs.max(-1) / probs.sum(-1))[4:]
  first = 4 + np.argsort(-conf, kind="stable")[:3]
  one_call = mdm.generate(params, CFG, tokens, known, steps=1)
  np.testing.assert_array_equal(one_call[0, 4:], np.argmax(logits[4:], axis=-1))
  two_calls = mdm.generate(params, CFG, tokens, known, steps=2)
  np.testing.assert_array_equal(two_calls[0, first], np.argmax(logits[first], axis=-1))


def test_nelbo_texts_and_bad_input(params):
  texts = [np.arange(1, 30), np.arange(5, 12)]
  out = mdm.nelbo_texts(params, CFG, texts, num_samples=4, window=16, context=4)
  assert out["tokens"] == 36 and out["nelbo_per_token"] > 0 and out["stderr_per_token"] >= 0
  with pytest.raises(ValueError, match="mask token"):
    mdm.elbo(params, CFG, np.asarray([[5, mdm.MASK_ID, 7]]), num_samples=2,
             key=jax.random.key(0))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    mdm.elbo(params, CFG, np.asarray([[5, 6]]), num_samples=2, key=jax.random.key(0),
             mask_id=CFG.vocab_size)
  with pytest.raises(ValueError, match="num_samples"):
    mdm.elbo(params, CFG, np.asarray([[5, 6]]), num_samples=0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="steps"):
    mdm.generate(params, CFG, np.asarray([[5, 6]]), np.asarray([[True, False]]), steps=0)


# ------------------------------------------- adapting a causal model (DiffuLLaMA way)


def test_shifted_mdm_at_anneal_start_is_the_causal_model(params):
  """Step 0 of the annealing (width-1 blocks) with the shift: the unmasked MDM's
  prediction of x_i is the causal content stream's, from position i - 1."""
  from a3_jax import teacher_forced
  tokens = np.random.default_rng(6).integers(1, CFG.vocab_size, (2, 12)).astype(np.int32)
  seg = np.ones((2, 12), np.int32)
  pos = np.broadcast_to(np.arange(12, dtype=np.int32), (2, 12))
  groups = mdm.anneal_groups(0, 10, seg, pos, jax.random.key(0))
  np.testing.assert_array_equal(groups, pos)
  out = jax.jit(lambda p: mdm.logits(A3LM(CFG), p, tokens, seg, pos, groups_BxT=groups,
                                     shift=True))(params)
  logp = jax.nn.log_softmax(out, axis=-1)
  got = np.take_along_axis(np.asarray(logp), tokens[..., None], -1)[..., 0][:, 1:]
  # The causal model's log-probs renormalised without the mask token (its logit is -inf).
  causal = np.asarray(jax.jit(lambda p: teacher_forced.token_scores(
      A3LM(CFG), p, tokens, pos, seg, pos, head="content")[0])(params))[:, 1:]
  h = jax.jit(lambda p: A3LM(CFG).apply(p, tokens, mdm.Rows(pos, seg, pos), None,
                                        method=A3LM.forward)[0])(params)
  raw = np.asarray(jax.nn.log_softmax(A3LM(CFG).apply(params, h, method=A3LM.logits), -1))
  np.testing.assert_allclose(got, causal - np.log1p(-np.exp(raw[:, :-1, mdm.MASK_ID])),
                             rtol=1e-5, atol=1e-5)


def test_anneal_groups_widen_from_causal_to_full():
  seg = np.ones((3, 32), np.int32)
  pos = np.broadcast_to(np.arange(32, dtype=np.int32), (3, 32))
  key = jax.random.key(1)

  def visible(step):
    g = np.asarray(mdm.anneal_groups(step, 8, seg, pos, key))
    return (g[:, None, :] <= g[:, :, None]).sum()

  seen = [visible(s) for s in range(9)]
  assert seen[0] == 3 * 32 * 33 // 2  # causal
  assert seen[8] == 3 * 32 * 32 and visible(100) == seen[8]  # full from the end on
  assert seen[0] < seen[2] < seen[4] < seen[8]
  for step in range(8):  # blocks of the scheduled width, at a random offset per row
    width = 1 + (31 * step) // 8
    for row in np.asarray(mdm.anneal_groups(step, 8, seg, pos, key)):
      runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, row, -2])))
      assert runs.max() <= width and (runs[1:-1] == width).all()
  np.testing.assert_array_equal(mdm.anneal_groups(3, 0, seg, pos, key), 0)  # no annealing


def test_shifted_loss_never_masks_first_tokens_and_is_its_elbo(params):
  rng = np.random.default_rng(7)
  tokens = rng.integers(1, CFG.vocab_size, (4, 16)).astype(np.int32)
  seg = np.ones((4, 16), np.int32)
  seg[:, 10:] = 2
  seg[3, 13:] = 0
  pos = np.where(seg == 2, np.arange(16) - 10, np.arange(16)).astype(np.int32)
  batch = {"tokens": tokens, "segment_ids": seg, "positions": pos}
  key = jax.random.key(8)
  tc = TrainConfig(objective="mdm", mdm_shift=True)
  stats = jax.jit(lambda p: mdm.loss_stats(A3LM(CFG), tc, p, batch, key))(params)
  firsts = np.asarray(mdm.first_of_segment(seg))
  assert firsts[:, 0].all() and firsts[:, 10].all() and firsts.sum() == 8
  assert float(stats["count"]) == np.sum(seg != 0) - 8
  time_key, mask_key = jax.random.split(key)
  t = np.asarray(mdm.stratified_times(time_key, (4,)))
  masked = (np.asarray(jax.random.uniform(mask_key, (4, 16))) < t[:, None]) & (seg != 0)
  masked &= ~firsts
  expected = mdm.elbo_terms(params, CFG, tokens, masked[None], t[None], seg, pos, shift=True)
  np.testing.assert_allclose(float(stats["nll"]), expected.sum(), rtol=1e-5)


def test_shifted_sampler_and_entropy_criterion(params):
  tokens = np.random.default_rng(9).integers(1, CFG.vocab_size, (2, 12)).astype(np.int32)
  known = np.zeros((2, 12), bool)
  known[:, :4] = True
  for criterion in mdm.CRITERIA:
    out = mdm.generate(params, CFG, tokens, known, steps=4, shift=True, criterion=criterion)
    np.testing.assert_array_equal(out[:, :4], tokens[:, :4])
    assert np.all(out[:, 4:] != mdm.MASK_ID)
  with pytest.raises(ValueError, match="first token"):
    mdm.generate(params, CFG, tokens, np.zeros((2, 12), bool), steps=2, shift=True)
  with pytest.raises(ValueError, match="criterion"):
    mdm.generate(params, CFG, tokens, known, steps=2, criterion="margin")
  with pytest.raises(ValueError, match="objective 'mdm' only"):
    TrainConfig(objective="a3", mdm_anneal_steps=5)
