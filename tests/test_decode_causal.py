"""Causal sampling of the content stream against one teacher-forced causal pass."""

import jax
import numpy as np
import pytest
from flax.linen import meta

from a3_jax.config import get_preset
from a3_jax.decoding.causal import decode_causal
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError
from a3_jax.model import A3LM, init_params

CFG = get_preset("tiny", init_std=0.5)  # peaked distributions: no near-ties in argmax
B, T = 4, 12


@pytest.fixture(scope="module")
def params():
  return meta.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0)))


def _layout():
  """Continuation, infilling with a known suffix, known tokens between blanks, padding."""
  tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  known = np.zeros((B, T), bool)
  known[0, :3] = True
  known[1, :2] = known[1, -3:] = True
  known[2, [0, 1, 4, 7, 8]] = True
  known[3, :5] = True
  valid = np.ones((B, T), bool)
  valid[3, -4:] = False
  return tokens, known, valid


def _causal_logp(params, tokens):
  """log p(token i | tokens < i) [B, T] (i >= 1) from one content-stream pass."""
  groups = np.broadcast_to(np.arange(T), tokens.shape)
  logits = A3LM(CFG).apply(params, tokens, groups, streams="content")["content"]
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float32)[:, :-1], axis=-1))
  out = np.zeros(tokens.shape, np.float32)
  out[:, 1:] = np.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  return out, logp


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_samples_are_the_causal_lm_left_of_each_blank(params, temperature):
  tokens, known, valid = _layout()
  out = jax.device_get(decode_causal(params, CFG, tokens, known, valid, seed=3,
                                     sampler=SamplerConfig(temperature=temperature)))
  blank = valid & ~known
  np.testing.assert_array_equal(out.tokens[known & valid], tokens[known & valid])
  assert (out.groups[known & valid] == 0).all() and (out.groups[blank] > 0).all()
  assert (out.groups[~valid] == -1).all()
  filled = np.where(valid, out.tokens, 0)
  lp, logp = _causal_logp(params, filled)
  # The recorded log-prob is the causal likelihood of the sampled tokens: every blank
  # saw exactly the tokens to its left (a known suffix never).
  np.testing.assert_allclose(out.logprob, np.where(blank, lp, 0).sum(axis=1), atol=1e-4)
  if temperature == 0.0:
    greedy = logp.argmax(-1)
    np.testing.assert_array_equal(filled[:, 1:][blank[:, 1:]], greedy[blank[:, 1:]])


def test_eos_stops_a_row(params):
  tokens, known, _ = _layout()
  known[:] = False
  known[:, :5] = True  # the layout's prefill buffer: one compile for both tests
  run = lambda **kw: jax.device_get(decode_causal(params, CFG, tokens, known,
                                                  sampler=SamplerConfig(temperature=0.0), **kw))
  free = run()
  eos = int(free.tokens[0, 7])
  out = run(eos_id=eos, pad_id=7)
  stop = 5 + int(np.flatnonzero(free.tokens[0, 5:] == eos)[0])
  assert out.length[0] == stop + 1
  np.testing.assert_array_equal(out.tokens[0, :stop + 1], free.tokens[0, :stop + 1])
  assert (out.tokens[0, stop + 1:] == 7).all() and (out.groups[0, stop + 1:] == -1).all()


def test_position_zero_needs_a_token(params):
  tokens, known, _ = _layout()
  known[0, 0] = False
  with pytest.raises(UserError, match="position 0"):
    decode_causal(params, CFG, tokens, known)
