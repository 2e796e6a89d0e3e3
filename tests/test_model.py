"""Two-stream model: no leakage, exact factorisation, empty rows, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import meta

from a3_jax.attention.einsum import einsum_attention
from a3_jax.config import get_preset
from a3_jax.loss import token_logprobs
from a3_jax.model import A3LM, init_params, stream_rows

CFG = get_preset("tiny")
T = 12


@pytest.fixture(scope="module")
def model_and_params():
  return A3LM(CFG), meta.unbox(init_params(CFG, jax.random.key(0)))


def _random_groups(rng, t=T):
  """Unsorted group ids with ties that do not start at 0."""
  return rng.integers(3, 8, size=(1, t)).astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_leakage_from_later_or_same_group(model_and_params, seed):
  model, params = model_and_params
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (1, T)).astype(np.int32)
  groups = _random_groups(rng)
  apply = jax.jit(model.apply)
  base = apply(params, tokens, groups)
  changed_somewhere = False
  for j in range(T):
    edited = tokens.copy()
    edited[0, j] = (edited[0, j] + 1 + rng.integers(CFG.vocab_size - 1)) % CFG.vocab_size
    out = apply(params, edited, groups)
    for i in range(T):
      q_diff = np.abs(out["query"][0, i] - base["query"][0, i]).max()
      c_diff = np.abs(out["content"][0, i] - base["content"][0, i]).max()
      if groups[0, j] >= groups[0, i]:  # the query stream must not see x_j
        assert q_diff == 0.0, (i, j)
      else:
        changed_somewhere |= q_diff > 1e-6
      if groups[0, j] > groups[0, i]:  # the content stream must not see later groups
        assert c_diff == 0.0, (i, j)
  assert changed_somewhere, "no earlier-group token changed any prediction: test is vacuous"


@pytest.mark.parametrize("seed", [0, 1])
def test_one_pass_equals_brute_force_per_group_conditionals(model_and_params, seed):
  """Sum of log p(x_i | x_{G<k}) from one pass == the same computed group by group,
  each time on a sequence from which every later-group token is physically removed."""
  model, params = model_and_params
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (1, T)).astype(np.int32)
  groups = _random_groups(rng)
  positions = np.arange(T, dtype=np.int32)[None]
  one_pass = token_logprobs(model.apply(params, tokens, groups)["query"], tokens)
  brute = np.zeros(T)
  for k in np.unique(groups):
    keep = np.nonzero(groups[0] <= k)[0]  # earlier groups and the targets, nothing later
    sub = model.apply(params, tokens[:, keep], groups[:, keep], None, positions[:, keep])
    logp = token_logprobs(sub["query"], tokens[:, keep])[0]
    for slot, i in enumerate(keep):
      if groups[0, i] == k:
        brute[i] = logp[slot]
  np.testing.assert_allclose(np.asarray(one_pass[0]), brute, atol=1e-5)
  np.testing.assert_allclose(float(one_pass.sum()), brute.sum(), atol=1e-4)


def test_content_mode_with_ar_groups_is_a_causal_lm(model_and_params):
  """group(i) = i: content logits at i depend on x_{<=i} only, and 'content' mode
  (no query stream) returns the same logits as the two-stream pass."""
  model, params = model_and_params
  tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, T)).astype(np.int32)
  groups = np.tile(np.arange(T, dtype=np.int32), (2, 1))
  both = model.apply(params, tokens, groups)
  content_only = model.apply(params, tokens, groups, streams="content")
  assert "query" not in content_only
  np.testing.assert_allclose(content_only["content"], both["content"], atol=1e-6)
  prefix = model.apply(params, tokens[:, :5], groups[:, :5], streams="content")
  np.testing.assert_allclose(prefix["content"], both["content"][:, :5], atol=1e-5)


def test_rows_with_no_visible_key_get_zero_output_and_finite_grads():
  rng = np.random.default_rng(0)
  b, r, s, n, k, h = 2, 5, 6, 4, 2, 8
  q = jnp.asarray(rng.normal(size=(b, r, n, h)), jnp.float32)
  kk = jnp.asarray(rng.normal(size=(b, s, k, h)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, s, k, h)), jnp.float32)
  key_group = jnp.asarray(rng.integers(1, 4, (b, s)), jnp.int32)
  key_seg = jnp.ones((b, s), jnp.int32)
  limit = jnp.asarray([[0, 0, 3, 1, 2]] * b, jnp.int32)  # rows 0, 1 see nothing
  seg = jnp.ones((b, r), jnp.int32)
  out = einsum_attention(q, kk, v, limit, seg, key_group, key_seg)
  assert np.all(np.asarray(out[:, :2]) == 0.0)
  assert np.abs(np.asarray(out[:, 2])).max() > 0
  grads = jax.grad(lambda q, kk, v: einsum_attention(q, kk, v, limit, seg, key_group,
                                                     key_seg).sum(), argnums=(0, 1, 2))(q, kk, v)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  assert np.all(np.asarray(grads[0][:, :2]) == 0.0)


def test_first_group_query_logits_are_all_equal(model_and_params):
  model, params = model_and_params
  tokens = np.random.default_rng(3).integers(0, CFG.vocab_size, (1, T)).astype(np.int32)
  groups = np.array([[0, 1, 0, 2, 0, 1, 1, 2, 0, 3, 3, 1]], np.int32)
  q = np.asarray(model.apply(params, tokens, groups)["query"][0])
  first = q[groups[0] == 0]
  np.testing.assert_allclose(first, np.broadcast_to(first[0], first.shape), atol=1e-6)


@pytest.mark.parametrize("make_bad, message", [
    (lambda t, g: (t, g[:, :-1]), "group ids have shape"),
    (lambda t, g: (t, g.astype(np.float32)), "group ids must be integers"),
    (lambda t, g: (t + CFG.vocab_size, g), "token ids must lie in"),
    (lambda t, g: (t - 1000, g), "token ids must lie in"),
    (lambda t, g: (t[0], g[0]), "tokens must be a [batch, length] array"),
])
def test_bad_inputs_raise_clear_value_errors(model_and_params, make_bad, message):
  model, params = model_and_params
  tokens = np.zeros((1, T), np.int32)
  groups = np.zeros((1, T), np.int32)
  bad_tokens, bad_groups = make_bad(tokens, groups)
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    model.apply(params, bad_tokens, bad_groups)


@pytest.mark.parametrize("overrides", [dict(remat="full"), dict(remat="dots"),
                                       dict(scan_layers=False)])
def test_remat_and_unrolled_layers_compute_the_same_loss_and_grads(model_and_params, overrides):
  _, params = model_and_params
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CFG.vocab_size, (2, T)).astype(np.int32)
  groups = _random_groups(rng).repeat(2, 0)

  def loss(p, cfg):
    return -token_logprobs(A3LM(cfg).apply(p, tokens, groups)["query"], tokens).mean()

  want = jax.value_and_grad(loss)(params, CFG)
  got = jax.value_and_grad(loss)(params, CFG.replace(**overrides))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got[1], want[1])


def test_bfloat16_activations_keep_fp32_params(model_and_params):
  _, params = model_and_params
  cfg = CFG.replace(dtype="bfloat16")
  tokens = np.zeros((1, T), np.int32)
  out = A3LM(cfg).apply(params, tokens, np.arange(T, dtype=np.int32)[None])
  assert out["query"].dtype == jnp.float32  # logits are upcast for the loss
  fresh = meta.unbox(init_params(cfg, jax.random.key(0)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(fresh))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_skipping_the_last_layers_content_rows_keeps_the_query_stream(model_and_params,
                                                                      scan_layers):
  _, params = model_and_params
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, CFG.vocab_size, (2, T)).astype(np.int32)
  content, query = stream_rows(_random_groups(rng).repeat(2, 0))
  model = A3LM(CFG.replace(scan_layers=scan_layers))
  h, g, _ = model.apply(params, tokens, content, query, method=A3LM.forward)
  none, g_skip, _ = model.apply(params, tokens, content, query, method=A3LM.forward,
                                content_out=False)
  assert h is not None and none is None
  np.testing.assert_allclose(g_skip, g, atol=1e-5)
