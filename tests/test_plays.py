"""Play-derived tasks (cloze, speaker, passages), continuation quality, the
diffusion model's multiple-choice score, on a synthetic play and a tiny model."""

import os
import sys

import jax
import numpy as np
import pytest
from flax.linen import meta

from a3_jax.config import get_preset
from a3_jax.model import init_params
from a3_jax.tasks import scoring

# plays.py and continuation.py serve experiments/adaptation alone and live there.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "adaptation"))
import continuation
import plays

CFG = get_preset("tiny")
SPEAKERS = ("ANNA", "BORIS", "CARLA", "DMITRI", "ELENA")


def synthetic_play(speeches: int = 60) -> str:
  """Persons, an ACT heading, then speeches of 5-7 numbered lines of varied length."""
  parts = ["PERSONS REPRESENTED.\n\nANNA, a lady.\nBORIS, her brother.\n\n\nACT I.\n\n"
           "SCENE I. A room.\n\n[Enter ANNA and BORIS.]\n\n"]
  for s in range(speeches):
    who = SPEAKERS[s % len(SPEAKERS)]
    lines = [f"line {s}-{i} " + " ".join(["word"] * ((s + i) % 6 + 3)) for i in range(5 + s % 3)]
    parts.append(f"{who}.\n" + "\n".join(lines) + "\n\n")
    if s % 10 == 9:
      parts.append("[Exit BORIS.]\n\n")
  return "".join(parts)


def test_lines_know_speakers_and_skip_persons_and_directions():
  lines = plays.lines_of(synthetic_play())
  spoken = [ln for ln in lines if ln.spoken]
  assert all(ln.text.startswith("line ") for ln in spoken)
  assert {ln.speaker for ln in spoken} == set(SPEAKERS)
  assert not any(ln.spoken for ln in lines if "a lady" in ln.text or "Exit" in ln.text)
  first = next(ln for ln in spoken if ln.text.startswith("line 7-"))
  assert first.speaker == SPEAKERS[7 % 5]


def test_cloze_items_hold_the_true_next_line_and_same_play_distractors():
  text = synthetic_play()
  items = plays.cloze_examples(text, 20, seed=3, context_lines=4, min_distance=10)
  assert len(items) == 20
  spoken = {ln.text.strip(): i for i, ln in enumerate(plays.lines_of(text)) if ln.spoken}
  for ex in items:
    context = ex.choices[0][0]
    assert all(c == context for c, _ in ex.choices)
    true = ex.choices[ex.label][1]
    assert text[text.index(context) + len(context):].startswith(true)  # the next line
    assert len([ln for ln in context.split("\n") if ln.strip()]) == 4
    assert len({e for _, e in ex.choices}) == 4
    for _, e in ex.choices:
      assert e in spoken and abs(len(e) - len(true)) <= 0.25 * len(true)
      assert e == true or abs(spoken[e] - spoken[true]) >= 10
  assert len({ex.label for ex in items}) > 1


def test_speaker_items_share_the_speech_and_name_four_speakers():
  text = synthetic_play()
  items = plays.speaker_examples(text, 15, seed=1, speech_lines=2)
  assert len(items) == 15
  for ex in items:
    names = [x.split(".\n")[0] for _, x in ex.choices]
    speeches = {x.split(".\n", 1)[1] for _, x in ex.choices}
    assert len(set(names)) == 4 and set(names) <= set(SPEAKERS) and len(speeches) == 1
    speech = speeches.pop()
    assert speech.count("\n") == 1  # two lines
    context = ex.choices[0][0]
    assert text[text.index(context) + len(context):].startswith(
        f"{names[ex.label]}.\n{speech}")
  with pytest.raises(ValueError, match="4 speakers"):
    plays.speaker_examples(text, 5, min_speeches=100)


def test_passages_are_five_lines_of_one_speech_with_the_middle_blank():
  text = synthetic_play()
  stories = plays.passages(text, 30, seed=0)
  assert len(stories) == 30
  for st in stories:
    whole = st.prefix + st.middle + st.suffix
    assert whole in text and len(st.sentences) == 5
    assert len({s.split("-")[0] for s in st.sentences}) == 1  # one speech
  prose = "First line of a paragraph here.\nSecond one.\nThird line, the middle.\nFourth.\n" \
          "Fifth line.\n\nAnother paragraph.\n"
  (only,) = plays.passages(prose, 5)
  assert only.middle == "Third line, the middle." and only.prefix.endswith("Second one.\n")


@pytest.fixture(scope="module")
def params():
  return meta.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0)))


def test_mdm_choice_scores_share_noise_within_an_example(params):
  pairs = [([5, 6, 7, 8], [9, 10, 11])] * 2 + [([5, 6, 7, 30], [9, 10, 11])]
  same, _ = scoring.mdm_loglikelihoods(params, CFG, pairs, num_samples=4, noise_ids=[0, 0, 0])
  assert same[0] == same[1] and same[0] != same[2] and np.all(same < 0)  # context matters
  other, counts = scoring.mdm_loglikelihoods(params, CFG, pairs, num_samples=4,
                                             noise_ids=[0, 1, 2])
  assert other[0] != other[1] and list(counts) == [3, 3, 3]


def test_continuations_and_their_judge(params):
  texts = [np.arange(1, 60), np.arange(100, 140)]
  prompts = continuation.prompts_from_texts(texts, 4, 8, 8, seed=0)
  for row in prompts:  # a real slice of a text, with 8 more tokens after it
    text = texts[0] if row[0] < 100 else texts[1]
    start = int(np.flatnonzero(text == row[0])[0])
    np.testing.assert_array_equal(text[start:start + 8], row)
    assert start + 16 <= len(text)
  for method, criterion in (("a3-dynamic", "entropy"), ("mdm", "entropy")):
    out = continuation.generate(params, CFG, prompts, 8, method=method, calls=4,
                                criterion=criterion, mdm_shift=True)
    assert out.shape == (4, 8) and np.all((out > 0) & (out < CFG.vocab_size))
  judged = continuation.judge(params, CFG, prompts, out)
  pairs = [(list(p), list(s)) for p, s in zip(prompts, out)]
  logp, counts = scoring.loglikelihoods(params, CFG, pairs, head="content")
  np.testing.assert_allclose(judged["perplexity"], np.exp(-logp.sum() / counts.sum()), rtol=1e-6)
  assert continuation.unigram_entropy([3, 3, 3]) == 0.0
  np.testing.assert_allclose(continuation.unigram_entropy([1, 2, 1, 2]), np.log(2))
  with pytest.raises(ValueError, match="divide"):
    continuation.generate(params, CFG, prompts, 8, method="a3", calls=3)
