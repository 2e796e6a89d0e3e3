"""Samplers: greedy, temperature, top-k, top-p; keys independent of the batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a3_jax.decoding import sampling
from a3_jax.decoding.sampling import SamplerConfig

PROBS = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
LOGITS = np.log(PROBS)[None, None]  # [1, 1, V]


def _draws(sampler, n=4000):
  keys = sampling.position_keys(0, jnp.arange(n), 1, jnp.zeros((n, 1), jnp.int32), 0)
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, 1, len(PROBS)))
  return np.asarray(jax.jit(sampling.sample)(logits, keys, sampling.sampler_arrays(sampler)))


def test_temperature_one_follows_the_model():
  freq = np.bincount(_draws(SamplerConfig()).ravel(), minlength=4) / 4000
  np.testing.assert_allclose(freq, PROBS, atol=0.03)


@pytest.mark.parametrize("sampler,support", [
    (SamplerConfig(temperature=0.0), {0}),
    (SamplerConfig(top_k=1), {0}),
    (SamplerConfig(top_k=2), {0, 1}),
    (SamplerConfig(top_p=0.8), {0, 1}),    # 0.5 + 0.3 reaches 0.8
    (SamplerConfig(top_p=0.81), {0, 1, 2}),
    # top-p acts on the renormalised top-3: 0.526 + 0.316 = 0.842 > 0.83 (0.8 unrenormalised)
    (SamplerConfig(top_k=3, top_p=0.83), {0, 1}),
])
def test_support(sampler, support):
  assert set(np.unique(_draws(sampler))) == support


def test_inverse_cdf_blocks_padding_and_zero_mass():
  """V = 300 (not a multiple of the block): mass on tokens 5, 150 and 299 only."""
  x = np.full((1, 300), -np.inf, np.float32)
  x[0, [5, 150, 299]] = np.log([0.2, 0.5, 0.3])
  u = np.array([0.0, 0.1999, 0.2001, 0.6999, 0.7001, np.nextafter(1, 0)], np.float32)
  picks = sampling.inverse_cdf(jnp.asarray(np.repeat(x, len(u), 0)), jnp.asarray(u), block=128)
  np.testing.assert_array_equal(picks, [5, 5, 150, 150, 299, 299])


def test_low_temperature_sharpens():
  freq = np.bincount(_draws(SamplerConfig(temperature=0.5)).ravel(), minlength=4) / 4000
  want = PROBS ** 2 / (PROBS ** 2).sum()
  np.testing.assert_allclose(freq, want, atol=0.03)


def test_keys_depend_on_row_id_not_batch_position():
  rows = jnp.array([7, 3, 5])
  pos = jnp.array([[2, 4], [2, 4], [1, 9]])
  batch = jax.random.key_data(sampling.position_keys(11, rows, 4, pos, 0))
  alone = jax.random.key_data(sampling.position_keys(11, rows[1:2], 4, pos[1:2], 0))
  np.testing.assert_array_equal(batch[1], alone[0])
  assert not np.array_equal(batch[0], batch[1])  # other row id, other key
  other_stream = jax.random.key_data(sampling.position_keys(11, rows, 4, pos, 1))
  assert not np.array_equal(batch, other_stream)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0),
                                    dict(top_p=1.5)])
def test_bad_settings(kwargs):
  with pytest.raises(ValueError):
    SamplerConfig(**kwargs)
