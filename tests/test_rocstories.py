"""ROCStories infilling (the paper's protocol) from a Story Cloze csv, through a3-eval;
the middle keeps the ids it has in running text under a byte-level BPE tokenizer."""

import csv
import json
import math
import re

import pytest

from a3_jax.tasks import infill
from a3_jax.tokenizer import load_tokenizer
from cli_helpers import run_main, tiny_export

# Made-up stories in the Story Cloze validation csv's columns (never the real data).
HEADER = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3",
          "InputSentence4", "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2",
          "AnswerRightEnding"]
STORIES = [
    ["t1", "Mia planted tomatoes in May.", "She watered them every morning.",
     "By July the vines were heavy with fruit.", "She picked a basket of them.",
     "Mia hated gardening.", "Mia made sauce for her neighbours.", "2"],
    ["t2", "Omar missed the early bus.", "He ran to the next stop.",
     "The driver waited for him.", "Omar thanked her twice.",
     "He got to work on time.", "Omar bought a car that day.", "1"],
    ["t3", "The kitten hid under the bed.", "Nobody could reach it.",
     "Lena opened a can of tuna.", "The kitten came out at once.",
     "Lena was bitten by a dog.", "Lena picked it up and laughed.", "2"],
]


@pytest.fixture
def story_csv(tmp_path):
  path = tmp_path / "cloze_val.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([HEADER] + STORIES)
  return str(path)


class ByteLevelWords:
  """GPT-2-style pieces (a word keeps its leading space; no dummy prefix), numbered as
  first seen: " It" and "It" are different ids, as in SmolLM2's tokenizer."""

  _split = re.compile(r" ?\w+| ?[^\w\s]+|\s+")

  def __init__(self):
    self.ids = {}

  def encode(self, text):
    return [self.ids.setdefault(p, len(self.ids)) for p in self._split.findall(text)]


def test_middle_keeps_its_running_text_ids(story_csv):
  stories = infill.load_examples(story_csv)
  assert stories[0].suffix == "She picked a basket of them. Mia made sauce for her neighbours."
  tok = ByteLevelWords()
  for s in stories:
    pre, mid, suf = infill.encode_in_context(tok, (s.prefix, s.middle, s.suffix))
    assert pre + mid + suf == tok.encode(" ".join(s.sentences))
    assert mid == tok.encode(" " + s.middle) != tok.encode(s.middle)
  _, known, _, spans, golds = infill.infill_layout(tok, stories)
  assert [b - a for a, b in spans] == [len(g) for g in golds] == [9, 6, 7]
  assert all(not known[i, a:b].any() and known[i, a - 1] for i, (a, b) in enumerate(spans))


@pytest.mark.slow
@pytest.mark.parametrize("head,group_size", [("query", 2), ("content", 1)])
def test_a3_eval_rocstories(story_csv, tmp_path, head, group_size):
  export = tiny_export(tmp_path)
  code, stdout, stderr = run_main("a3_jax.cli.eval", f"--checkpoint={export}",
                                  "--task=rocstories", f"--task_data={story_csv}", "--limit=2",
                                  f"--head={head}", f"--group_size={group_size}", "--json")
  assert code == 0, stderr[-2000:]
  out = json.loads(stdout)
  tok = load_tokenizer()
  stories = infill.load_examples(story_csv, limit=2)
  blanks = [len(infill.encode_in_context(tok, (s.prefix, s.middle, s.suffix))[1])
            for s in stories]
  assert out["examples"] == len(out["predictions"]) == 2
  assert out["method"] == {"query": "a3", "content": "ar"}[head]
  assert out["calls_per_story"] == sum(math.ceil(n / group_size) for n in blanks) / 2
  assert all(0.0 <= out[k] <= 100.0 for k in infill.ROUGE_TYPES)
  assert out["exact_match"] == 0.0  # a random model does not write the gold sentence


def test_causal_fill_leaves_out_columns_after_the_last_blank():
  """The prefix-only baseline runs only up to its last blank: the same tokens as a fill
  over the whole width (whose later columns it cannot see)."""
  import jax
  import numpy as np
  from flax.linen import meta
  from a3_jax.config import get_preset
  from a3_jax.model import init_params
  from a3_jax.tasks import fill
  config = get_preset("tiny", init_std=0.3)
  params = meta.unbox(init_params(config, jax.random.key(0)))
  tokens = np.random.default_rng(0).integers(1, config.vocab_size, (2, 40)).astype(np.int32)
  known = np.ones_like(tokens, bool)
  known[0, 5:9] = known[1, 3:5] = False
  out, calls = fill.fill(params, config, tokens, known, method="ar")
  from a3_jax.decoding.causal import decode_causal
  whole = decode_causal(params, config, tokens, known, sampler=fill.GREEDY).tokens
  np.testing.assert_array_equal(out, np.asarray(whole))
  assert calls == 6 and (out[:, 16:] == tokens[:, 16:]).all()
