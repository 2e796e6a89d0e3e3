"""Infilling a blank of unknown length: how often the chosen length is the true one.

Cases from the validation plays (Macbeth, The Tempest, Twelfth Night): one whole
line is blanked as `<blank:1-MAX>` between --prefix tokens of the text before it
and --suffix tokens after it (starting with its newline), each part tokenized
as `a3-generate` tokenizes a prompt. The length is chosen by
`blank_length.choose_length`: log p(suffix | prefix, L) from one batched pass,
with a uniform prior, and with the empirical prior of line lengths in the
training plays. Baseline: always the most common line length of the training
plays. Reports exact accuracy, accuracy within one token, and the mean absolute
error of each. Last line: one JSON object (also written to --out).

  python experiments/blank_length/run.py --export=DIR [--cases=300]
"""

from __future__ import annotations

import collections
import json

import numpy as np
from absl import app, flags

from a3_jax.convert.loader import load_model
from a3_jax.data.corpus import load_works
from a3_jax.decoding import blank_length
from a3_jax.decoding.prompt import LengthTemplate

FLAGS = flags.FLAGS
flags.DEFINE_string("export", None, "a3-export directory of the model")
flags.DEFINE_integer("cases", 300, "blanked lines")
flags.DEFINE_integer("max_length", 20, "candidate lengths 1..max_length (lines longer are skipped)")
flags.DEFINE_integer("prefix", 32, "known tokens before the blank")
flags.DEFINE_integer("suffix", 16, "known tokens after the blank")
flags.DEFINE_integer("seed", 0, "which lines")
flags.DEFINE_string("out", None, "also write the JSON result here")


def _line_spans(text):
  """(start, end) character spans of the non-empty lines of a text."""
  spans, start = [], 0
  for line in text.split("\n"):
    if line.strip():
      spans.append((start, start + len(line)))
    start += len(line) + 1
  return spans


def _length_counts(tokenizer, max_length):
  counts = collections.Counter()
  for _, text in load_works("train"):
    for start, end in _line_spans(text):
      n = len(tokenizer.encode(text[start:end]))
      if n <= max_length:
        counts[n] += 1
  return counts


def _cases(tokenizer, n_cases, max_length, prefix, suffix, seed):
  rng = np.random.default_rng(seed)
  works = load_works("validation")
  spans = [(w, s) for w, (_, text) in enumerate(works) for s in _line_spans(text)]
  cases = []
  for i in rng.permutation(len(spans)):
    w, (start, end) = spans[i]
    text = works[w][1]
    before = tokenizer.encode(text[max(0, start - 40 * prefix):start])[-prefix:]
    middle = tokenizer.encode(text[start:end])
    after = tokenizer.encode(text[end:end + 40 * suffix])[:suffix]
    if len(before) == prefix and len(after) == suffix and 1 <= len(middle) <= max_length:
      cases.append((np.asarray(before, np.int32), len(middle), np.asarray(after, np.int32)))
    if len(cases) == n_cases:
      break
  return cases


def _summary(chosen, true):
  err = np.abs(np.asarray(chosen) - np.asarray(true))
  return {"exact": round(float(np.mean(err == 0)), 4), "within_1": round(float(np.mean(err <= 1)), 4),
          "mean_abs_error": round(float(np.mean(err)), 3)}


def main(argv):
  del argv
  params, cfg, tokenizer = load_model(FLAGS.export)
  lengths = np.arange(1, FLAGS.max_length + 1)
  counts = _length_counts(tokenizer, FLAGS.max_length)
  mode = max(counts, key=counts.get)
  freq = np.array([counts[n] + 1 for n in lengths], np.float64)
  empirical = np.log(freq / freq.sum())
  cases = _cases(tokenizer, FLAGS.cases, FLAGS.max_length, FLAGS.prefix, FLAGS.suffix,
                 FLAGS.seed)
  true, by_score, by_score_prior = [], [], []
  for before, length, after in cases:
    template = LengthTemplate(before, np.ones(len(before), bool), after,
                              np.ones(len(after), bool), range(1, FLAGS.max_length + 1))
    choice = blank_length.choose_length(params, cfg, template)
    true.append(length)
    by_score.append(choice.chosen)
    by_score_prior.append(int(lengths[np.argmax(choice.score + empirical)]))
  results = {"export": FLAGS.export, "cases": len(cases), "candidates": f"1-{FLAGS.max_length}",
             "prefix": FLAGS.prefix, "suffix": FLAGS.suffix,
             "most_common_training_length": int(mode),
             "score_uniform_prior": _summary(by_score, true),
             "score_empirical_prior": _summary(by_score_prior, true),
             "baseline_most_common": _summary([mode] * len(true), true),
             "true_length_histogram": {int(n): int(c) for n, c in
                                       sorted(collections.Counter(true).items())}}
  for name in ("score_uniform_prior", "score_empirical_prior", "baseline_most_common"):
    print(f"{name:24s} {results[name]}", flush=True)
  line = json.dumps(results)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(line + "\n")
  print(line)


if __name__ == "__main__":
  flags.mark_flag_as_required("export")
  app.run(main)
