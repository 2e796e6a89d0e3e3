"""One task end to end: read its data, score or generate, return its metrics."""

from __future__ import annotations

from a3_jax.config import ModelConfig
from a3_jax.tasks import MULTIPLE_CHOICE, TASKS, generation, infill, multiple_choice
from a3_jax.errors import UserError

if tuple(sorted(multiple_choice.TASKS)) != MULTIPLE_CHOICE:
  raise ImportError(f"tasks.MULTIPLE_CHOICE {MULTIPLE_CHOICE} != multiple_choice.TASKS")

# The fill method of each head for the generation tasks (a3-dynamic is asked for by name).
HEAD_METHODS = {"query": "a3", "content": "ar", "mdm": "mdm"}


def run_task(task: str, data: str, params, config: ModelConfig, tokenizer, *,
             head: str = "query", method: str | None = None, limit: int | None = None,
             batch_size: int = 8, group_size: int = 1, max_new_tokens: int = 24,
             mdm_shift: bool = False) -> dict:
  """Metrics of `task` on `data` (a task file or tfds:NAME[:SPLIT]).

  head: query (A3) | content (causal baseline) | mdm (masked diffusion; multiple
  choice by its conditional ELBO, as DiffuLLaMA). method overrides the fill method
  of the generation tasks. mdm_shift: a head-'mdm' model adapted with the DiffuLLaMA
  shift (logits at i predict token i + 1; a3_jax/mdm.py).
  """
  if task not in TASKS:
    raise UserError(f"unknown task {task!r}; choose one of {TASKS}")
  if head not in HEAD_METHODS:
    raise UserError(f"unknown head {head!r}; choose one of {tuple(HEAD_METHODS)}")
  if limit is not None and limit < 1:
    raise UserError(f"limit must be >= 1, got {limit}")
  out = {"task": task, "data": data, "head": head}
  if task in multiple_choice.TASKS:
    examples = multiple_choice.load_examples(task, data, limit)
    return {**out, **multiple_choice.evaluate_choices(
        params, config, tokenizer, examples, reduction=multiple_choice.TASKS[task][1],
        head=head, batch_size=batch_size, mdm_shift=mdm_shift)}
  method = method or HEAD_METHODS[head]
  out["method"] = method
  if task == "triviaqa":
    examples = generation.load_examples(data, limit)
    return {**out, **generation.evaluate_qa(params, config, tokenizer, examples, method=method,
                                            max_new_tokens=max_new_tokens,
                                            batch_size=batch_size, group_size=group_size,
                                            mdm_shift=mdm_shift)}
  stories = infill.load_examples(data, limit)
  return {**out, **infill.evaluate_infill(params, config, tokenizer, stories, method=method,
                                          group_size=group_size, batch_size=batch_size,
                                          mdm_shift=mdm_shift)}
