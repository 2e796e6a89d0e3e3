"""TriviaQA-style question answering: greedy generation, correct if it matches an alias.

Prompt `Question: {q}?\nAnswer:` (the DiffuLLaMA protocol; the question's own
'?' is not doubled, and the space after 'Answer:' is left to the model, whose
first answer token carries it). The prediction is the generated text up to its
first newline; it is correct if, after TriviaQA's normalisation (lower case, no
punctuation, no articles, single spaces), it equals or contains (as whole
words) a normalised gold alias.

Accepted records: HF hub jsonl {question, answer: {value, aliases,
normalized_aliases}}, the published JSON {Data: [{Question, Answer: {Value,
Aliases, NormalizedAliases}}]}, tfds trivia_qa, or {question, answers: [...]}.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Sequence

import numpy as np

from a3_jax.config import ModelConfig
from a3_jax.tasks import fill as fill_lib
from a3_jax.tasks import readers
from a3_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class QAExample:
  question: str
  aliases: tuple[str, ...]


def normalize_answer(text: str) -> str:
  """TriviaQA's answer normalisation."""
  text = text.lower().replace("_", " ")
  text = "".join(ch for ch in text if ch not in set(string.punctuation + "‘’´`"))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def is_correct(prediction: str, aliases: Sequence[str]) -> bool:
  pred = normalize_answer(prediction)
  if not pred:
    return False
  for alias in aliases:
    gold = normalize_answer(alias)
    if gold and (pred == gold or f" {gold} " in f" {pred} "):
      return True
  return False


def prompt(question: str) -> str:
  question = question.strip()
  return f"Question: {question if question.endswith('?') else question + '?'}\nAnswer:"


def triviaqa(record: dict, where: str) -> QAExample:
  question = readers.get(record, ("question", "Question"), where)
  if "answers" in record and isinstance(record["answers"], list):
    aliases = record["answers"]
  else:
    answer = readers.get(record, ("answer", "Answer"), where)
    if not isinstance(answer, dict):
      raise UserError(f"{where}: 'answer' must be an object with aliases")
    aliases = list(answer.get("aliases") or answer.get("Aliases") or [])
    aliases += list(answer.get("normalized_aliases") or answer.get("NormalizedAliases") or [])
    value = answer.get("value") or answer.get("Value")
    aliases += [value] if value else []
  aliases = tuple(a for a in aliases if isinstance(a, str) and a.strip())
  if not aliases:
    raise UserError(f"{where}: missing field 'answer' aliases (no gold answer)")
  return QAExample(question, aliases)


def load_examples(spec: str, limit: int | None = None) -> list[QAExample]:
  records = readers.read_records(spec)[:limit]
  return [triviaqa(r, f"task data {spec}, record {i}") for i, r in enumerate(records)]


def evaluate_qa(params, config: ModelConfig, tokenizer, examples: Sequence[QAExample], *,
                method: str = "a3", max_new_tokens: int = 24, batch_size: int = 8,
                group_size: int = 1, mdm_shift: bool = False) -> dict:
  """Exact-match accuracy (alias matching) of greedy answers; also the predictions.
  mdm_shift (method mdm): the model was adapted with the DiffuLLaMA shift."""
  if not examples:
    raise UserError("no examples to evaluate")
  prompts = [tokenizer.encode(prompt(ex.question)) for ex in examples]
  predictions = []
  for s in range(0, len(examples), batch_size):
    chunk = prompts[s:s + batch_size]
    width = max(len(p) for p in chunk) + max_new_tokens
    if width > config.max_seq_len:
      raise UserError(f"a prompt of {width - max_new_tokens} tokens plus {max_new_tokens} "
                       f"new ones exceeds the model's {config.max_seq_len} positions")
    tokens = np.zeros((batch_size, width), np.int32)
    known = np.zeros((batch_size, width), bool)
    valid = np.zeros((batch_size, width), bool)
    for i, p in enumerate(chunk):
      tokens[i, :len(p)], known[i, :len(p)] = p, True
      valid[i, :len(p) + max_new_tokens] = True
    valid[len(chunk):] = False
    out, _ = fill_lib.fill(params, config, tokens, known, valid, method=method,
                           group_size=group_size, mdm_shift=mdm_shift,
                           eos_id=tokenizer.eos_id if tokenizer.eos_id >= 0 else None)
    for i, p in enumerate(chunk):
      new = [int(x) for x in out[i, len(p):len(p) + max_new_tokens]]
      if tokenizer.eos_id in new:
        new = new[:new.index(tokenizer.eos_id)]
      predictions.append(tokenizer.decode(new).split("\n")[0].strip())
  hits = [is_correct(p, ex.aliases) for p, ex in zip(predictions, examples)]
  return {"accuracy": float(np.mean(hits)), "examples": len(examples),
          "predictions": predictions}
