"""ROCStories-style infilling: sentences 1-2 and 4-5 given, sentence 3 generated
at its gold length in tokens, scored with ROUGE-1/2/L F1 x 100 (rouge-score, the
reference implementation; no stemming).

Accepted records (csv or jsonl): the Story Cloze csv (InputSentence1..4 and
RandomFifthSentenceQuiz1/2 with AnswerRightEnding: the right ending is
sentence 5), the ROCStories csv (sentence1..sentence5), or {"sentences": [5]}.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from a3_jax.config import ModelConfig
from a3_jax.tasks import fill as fill_lib
from a3_jax.tasks import readers
from a3_jax.errors import UserError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclasses.dataclass(frozen=True)
class Story:
  sentences: tuple[str, str, str, str, str]

  @property
  def prefix(self) -> str:
    return " ".join(self.sentences[:2])

  @property
  def middle(self) -> str:
    return self.sentences[2]

  @property
  def suffix(self) -> str:
    return " ".join(self.sentences[3:])


def rocstories(record: dict, where: str) -> Story:
  if isinstance(record.get("sentences"), list):
    sentences = record["sentences"]
  elif record.get("InputSentence1") is not None:
    right = readers.get(record, ("AnswerRightEnding",), where)
    if str(right).strip() not in ("1", "2"):
      raise UserError(f"{where}: AnswerRightEnding must be 1 or 2, got {right!r}")
    sentences = [readers.get(record, (f"InputSentence{i}",), where) for i in range(1, 5)]
    sentences.append(readers.get(record, (f"RandomFifthSentenceQuiz{str(right).strip()}",),
                                 where))
  else:
    sentences = [readers.get(record, (f"sentence{i}",), where) for i in range(1, 6)]
  sentences = [str(s).strip() for s in sentences]
  if len(sentences) != 5 or not all(sentences):
    raise UserError(f"{where}: a story needs 5 non-empty sentences")
  return Story(tuple(sentences))


def load_examples(spec: str, limit: int | None = None) -> list[Story]:
  records = readers.read_records(spec)[:limit]
  return [rocstories(r, f"task data {spec}, record {i}") for i, r in enumerate(records)]


def rouge_per_example(predictions: Sequence[str], references: Sequence[str],
                      measure: str = "fmeasure") -> dict:
  """ROUGE-1/2/L x 100 of each prediction: {name: float array [N]}; measure:
  fmeasure (F1, the protocol's), precision or recall."""
  from rouge_score import rouge_scorer
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
  scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
  return {name: 100.0 * np.array([getattr(s[name], measure) for s in scores])
          for name in ROUGE_TYPES}


def rouge_words(text: str) -> list[str]:
  """The words ROUGE compares (lower case, punctuation dropped, no stemming)."""
  from rouge_score import tokenizers
  return tokenizers.DefaultTokenizer(use_stemmer=False).tokenize(text)


def standard_error(values) -> float:
  """Of the mean of `values` (sample standard deviation / sqrt(n)); 0 for one value."""
  values = np.asarray(values, float)
  return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F1 x 100, and each mean's standard error over the examples
  ('rouge1_se', ...)."""
  per_example = rouge_per_example(predictions, references)
  return {**{name: float(v.mean()) for name, v in per_example.items()},
          **{f"{name}_se": standard_error(v) for name, v in per_example.items()}}


def encode_in_context(tokenizer, pieces: Sequence[str]) -> list[list[int]]:
  """The ids of each piece as they fall in the encoding of the pieces joined by spaces.

  Encoding the pieces one by one is wrong for byte-level BPE (GPT-2, LLaMA 3, SmolLM2),
  which has no dummy prefix: the middle would lose its leading space ("gangs.It") and
  its gold length would change. Prefix differences of the joined text keep the ids the
  model sees in running text; if the tokenizer merges across a boundary, each piece
  after the first is encoded with its space.
  """
  ids, done = [], []
  for n in range(1, len(pieces) + 1):
    longer = tokenizer.encode(" ".join(pieces[:n]))
    if longer[:len(done)] != done:
      return [tokenizer.encode(p if i == 0 else " " + p) for i, p in enumerate(pieces)]
    ids.append(longer[len(done):])
    done = longer
  return ids


def infill_layout(tokenizer, stories: Sequence[Story]):
  """tokens, known, valid [B, T] (prefix, gold-length blanks, suffix), the middle spans
  and the gold middles' ids."""
  parts = [encode_in_context(tokenizer, (s.prefix, s.middle, s.suffix)) for s in stories]
  width = fill_lib.round_width(max(len(a) + len(b) + len(c) for a, b, c in parts))
  tokens = np.zeros((len(stories), width), np.int32)
  known = np.zeros((len(stories), width), bool)
  valid = np.zeros((len(stories), width), bool)
  spans = []
  for i, (pre, mid, suf) in enumerate(parts):
    row = pre + mid + suf
    tokens[i, :len(row)] = row
    valid[i, :len(row)] = True
    known[i, :len(row)] = True
    known[i, len(pre):len(pre) + len(mid)] = False
    spans.append((len(pre), len(pre) + len(mid)))
  golds = [mid for _, mid, _ in parts]
  tokens[~known] = 0  # the gold middle is never handed to the model
  return tokens, known, valid, spans, golds


def evaluate_infill(params, config: ModelConfig, tokenizer, stories: Sequence[Story], *,
                    method: str = "a3", group_size: int = 1, batch_size: int = 8,
                    mdm_shift: bool = False) -> dict:
  """ROUGE-1/2/L x 100 of the generated middles; also token accuracy and the texts."""
  if not stories:
    raise UserError("no examples to evaluate")
  # Batches of similar prefix length: their middles share columns, which the causal
  # baseline runs once per column. Rows are filled independently (except that MDM's
  # steps follow the batch's longest middle); the order is undone.
  order = sorted(range(len(stories)), key=lambda i: len(stories[i].prefix))
  predictions, hits, total, calls, story_calls = {}, 0, 0, 0, []
  for s in range(0, len(stories), batch_size):
    chunk = [stories[i] for i in order[s:s + batch_size]]
    tokens, known, valid, spans, golds = infill_layout(tokenizer, chunk)
    longest = int(valid.sum(axis=1).max())
    if longest > config.max_seq_len:
      raise UserError(f"a story of {longest} tokens exceeds the model's "
                       f"{config.max_seq_len} positions")
    tokens, known, valid = (x[:, :config.max_seq_len] for x in (tokens, known, valid))
    out, n_calls = fill_lib.fill(params, config, tokens, known, valid, method=method,
                                 group_size=group_size, mdm_shift=mdm_shift)
    calls = max(calls, n_calls)
    for i, ((a, b), gold) in enumerate(zip(spans, golds)):
      hits += int(np.sum(out[i, a:b] == np.asarray(gold)))
      total += b - a
      story_calls.append(fill_lib.row_calls(method, b - a, group_size))
      predictions[order[s + i]] = tokenizer.decode(out[i, a:b])
  predictions = [predictions[i] for i in range(len(stories))]
  scores = rouge(predictions, [st.middle for st in stories])
  exact = np.mean([p.strip() == st.middle.strip() for p, st in zip(predictions, stories)])
  return {**scores, "token_accuracy": hits / max(total, 1), "exact_match": float(exact),
          "examples": len(stories), "model_calls": calls,
          "calls_per_story": float(np.mean(story_calls)), "predictions": predictions}
