"""Blanks of unknown length: parsing, and candidate scores equal separate passes."""

import jax
import numpy as np
import pytest
from flax.linen import meta

from a3_jax.config import get_preset
from a3_jax.decoding import blank_length
from a3_jax.decoding.prompt import LengthTemplate, parse_length_template, parse_prompt
from a3_jax.errors import UserError
from a3_jax.model import A3LM, init_params

CFG = get_preset("tiny", init_std=0.5, query_init_scale=0.5)


class _Chars:
  """A tokenizer of one token per character (code point mod 256)."""

  def encode(self, text):
    return [ord(c) % 256 for c in text]


def test_parse_length_template():
  template = parse_length_template("ab<blank:2>c<blank:2-4>de", _Chars(), max_new_tokens=1)
  assert template.lengths == range(2, 5)
  tokens, known = template.fill(3)
  assert tokens.tolist() == [97, 98, 0, 0, 99, 0, 0, 0, 100, 101, 0]
  assert known.tolist() == [1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0]
  assert parse_length_template("ab<blank:2>c", _Chars(), 0) is None
  for prompt, message in [("a<blank:1-2>b<blank:3-4>c", "at most one"),
                          ("a<blank:4-2>b", "MIN <= MAX"), ("a<blank:0-2>b", "MIN <= MAX"),
                          ("a<blank:1-2>", "needs known text after it")]:
    with pytest.raises(UserError, match=message):
      parse_length_template(prompt, _Chars(), 0)
  with pytest.raises(UserError, match="ask for 302 tokens"):  # the longest candidate counts
    parse_length_template("a<blank:2>b<blank:1-300>c", _Chars(), 0, max_len=256)
  with pytest.raises(UserError, match="unknown length"):
    parse_prompt("a<blank:1-2>b", _Chars(), 0)
  with pytest.raises(UserError, match="poisson:MEAN"):
    blank_length.log_prior("poisson:x", [1, 2])


def test_scores_equal_separate_passes():
  params = meta.unbox(init_params(CFG, jax.random.key(0)))
  rng = np.random.default_rng(0)
  before = rng.integers(0, CFG.vocab_size, 5).astype(np.int32)
  after = rng.integers(0, CFG.vocab_size, 4).astype(np.int32)
  before_known = np.array([1, 1, 0, 1, 1], bool)  # a fixed blank inside the prefix
  after_known = np.array([1, 1, 1, 0], bool)      # and a trailing one
  template = LengthTemplate(before, before_known, after, after_known, range(1, 5))
  choice = blank_length.choose_length(params, CFG, template, prior="poisson:3")
  apply = jax.jit(A3LM(CFG).apply)
  for i, length in enumerate(template.lengths):
    # Brute force: this length alone, unpadded, log p(suffix token | prefix) summed.
    tokens, known = template.fill(length)
    groups = np.where(known, np.where(np.arange(len(tokens)) < len(before), 0, 1), 2)
    logits = apply(params, tokens[None], groups[None])["query"][0]
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    expected = sum(logp[j, tokens[j]] for j in np.flatnonzero(groups == 1))
    np.testing.assert_allclose(choice.score[i], expected, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(choice.log_prior, blank_length.log_prior("poisson:3", range(1, 5)))
  assert choice.chosen == template.lengths[int(np.argmax(choice.score + choice.log_prior))]
  assert len(np.unique(np.round(choice.score, 3))) > 1  # the length matters to the score
  assert choice.as_json()["chosen_length"] == choice.chosen
