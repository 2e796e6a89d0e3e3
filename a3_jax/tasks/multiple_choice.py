"""Multiple choice: HellaSwag, WinoGrande, PIQA, SIQA (prompts of the DiffuLLaMA protocol).

Each example is a list of (context, continuation) choices and the index of the
right one; the prediction is the choice with the best summed or mean token
log-prob of its continuation (scoring.py). Both accuracies are reported; the
task's own reduction (the paper's) is `accuracy`.

Accepted record fields (published jsonl, HF hub jsonl, tfds):
  hellaswag   ctx | ctx_a + ctx_b | context; activity_label; endings [4]; label
  winogrande  sentence (one '_'); option1; option2; answer '1'/'2' | label 0/1
  piqa        goal; sol1; sol2; label 0/1 (or a sibling <name>-labels.lst)
  siqa        context; question; answerA/B/C; label '1'..'3' (or <name>-labels.lst)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from a3_jax.config import ModelConfig
from a3_jax.tasks import readers, scoring
from a3_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
  """choices: (context, continuation) per answer; label: index of the right one."""

  choices: tuple[tuple[str, str], ...]
  label: int


def _label(value, num_choices: int, where: str, one_based: bool) -> int:
  try:
    label = int(value) - (1 if one_based else 0)
  except (TypeError, ValueError):
    label = -1
  if not 0 <= label < num_choices:
    raise UserError(f"{where}: label {value!r} is not one of the {num_choices} choices")
  return label


def _hellaswag_text(text: str) -> str:
  """lm-evaluation-harness's HellaSwag clean-up of WikiHow markup."""
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def hellaswag(record: dict, where: str, labels=None) -> ChoiceExample:
  del labels
  if record.get("ctx_a") is not None:
    ctx = record["ctx_a"] + " " + str(readers.get(record, ("ctx_b",), where)).capitalize()
  else:
    ctx = readers.get(record, ("ctx", "context"), where)
  query = _hellaswag_text(readers.get(record, ("activity_label",), where) + ": " + ctx)
  endings = readers.get(record, ("endings",), where)
  if not isinstance(endings, list) or len(endings) < 2:
    raise UserError(f"{where}: 'endings' must be a list of at least 2 strings")
  label = _label(readers.get(record, ("label",), where), len(endings), where, False)
  return ChoiceExample(tuple((query, " " + _hellaswag_text(e)) for e in endings), label)


def winogrande(record: dict, where: str, labels=None) -> ChoiceExample:
  del labels
  sentence = readers.get(record, ("sentence",), where)
  if sentence.count("_") != 1:
    raise UserError(f"{where}: 'sentence' must hold exactly one '_' blank")
  options = [readers.get(record, (f"option{i}",), where) for i in (1, 2)]
  blank = sentence.index("_")
  rest = " " + sentence[blank + 1:].strip()
  if "answer" in record:
    label = _label(record["answer"], 2, where, True)
  else:
    label = _label(readers.get(record, ("label",), where), 2, where, False)
  return ChoiceExample(tuple((sentence[:blank] + o, rest) for o in options), label)


def piqa(record: dict, where: str, labels=None) -> ChoiceExample:
  goal = readers.get(record, ("goal",), where)
  sols = [readers.get(record, (f"sol{i}",), where) for i in (1, 2)]
  value = labels if labels is not None else readers.get(record, ("label",), where)
  label = _label(value, 2, where, False)
  return ChoiceExample(tuple((f"Question: {goal}\nAnswer: ", s) for s in sols), label)


def siqa(record: dict, where: str, labels=None) -> ChoiceExample:
  context = readers.get(record, ("context",), where)
  question = readers.get(record, ("question",), where)
  answers = [readers.get(record, (f"answer{c}",), where) for c in "ABC"]
  value = labels if labels is not None else readers.get(record, ("label",), where)
  label = _label(value, 3, where, True)
  return ChoiceExample(tuple((f"Question: {context} {question}\nAnswer: ", a)
                             for a in answers), label)


# name -> (record parser, the paper's reduction)
TASKS: dict[str, tuple[Callable, str]] = {
    "hellaswag": (hellaswag, "mean"),
    "winogrande": (winogrande, "mean"),
    "piqa": (piqa, "sum"),
    "siqa": (siqa, "sum"),
}


def load_examples(task: str, spec: str, limit: int | None = None) -> list[ChoiceExample]:
  """The first `limit` examples of a multiple-choice task file or tfds dataset."""
  if task not in TASKS:
    raise UserError(f"unknown multiple-choice task {task!r}; choose one of {sorted(TASKS)}")
  parse = TASKS[task][0]
  records = readers.read_records(spec)[:limit]
  labels = readers.sibling_labels(spec)
  if labels is not None and len(labels) < len(records):
    raise UserError(f"{spec}: the labels file has {len(labels)} lines for "
                     f"{len(records)} records")
  return [parse(r, f"task data {spec}, record {i}", None if labels is None else labels[i])
          for i, r in enumerate(records)]


def evaluate_choices(params, config: ModelConfig, tokenizer, examples: Sequence[ChoiceExample],
                     *, reduction: str = "sum", head: str = "query",
                     batch_size: int = 8, elbo_samples: int = 16,
                     mdm_shift: bool = False) -> dict:
  """Accuracy of the best-scoring choice: `accuracy` under `reduction` ('sum' or
  'mean' token log-prob), and both `accuracy_sum` and `accuracy_mean`.

  head 'mdm' (masked diffusion): the score is minus the continuation's conditional
  NELBO (scoring.mdm_loglikelihoods, `elbo_samples` samples shared by an
  example's choices; mdm_shift: the model was adapted with the DiffuLLaMA shift)."""
  if reduction not in ("sum", "mean"):
    raise UserError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
  if not examples:
    raise UserError("no examples to evaluate")
  pairs = [scoring.encode_pair(tokenizer, c, x) for ex in examples for c, x in ex.choices]
  if head == "mdm":
    noise_ids = [i for i, ex in enumerate(examples) for _ in ex.choices]
    logp, counts = scoring.mdm_loglikelihoods(params, config, pairs, num_samples=elbo_samples,
                                              noise_ids=noise_ids, shift=mdm_shift,
                                              batch_size=batch_size)
  else:
    start = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id
    logp, counts = scoring.loglikelihoods(params, config, pairs, head=head,
                                          batch_size=batch_size, start_id=max(start, 0))
  hits = {"sum": 0, "mean": 0}
  offset = 0
  for ex in examples:
    n = len(ex.choices)
    lp, cnt = logp[offset:offset + n], counts[offset:offset + n]
    offset += n
    hits["sum"] += int(np.argmax(lp)) == ex.label
    hits["mean"] += int(np.argmax(lp / cnt)) == ex.label
  total = len(examples)
  return {"accuracy": hits[reduction] / total, "accuracy_sum": hits["sum"] / total,
          "accuracy_mean": hits["mean"] / total, "reduction": reduction, "examples": total}
