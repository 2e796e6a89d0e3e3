"""Prompts with `<blank:N>` markers -> (tokens, known); decoded rows -> text and commit order."""

from __future__ import annotations

import re

import numpy as np

from a3_jax.errors import UserError

_BLANK = re.compile(r"<blank:([^>]*)>")


def parse_prompt(prompt: str, tokenizer, max_new_tokens: int, max_len: int | None = None):
  """(tokens [T], known [T]) of a prompt with <blank:N> markers and trailing blanks.

  max_len: the model's longest sequence; blanks beyond it are refused before any
  memory is taken for them.
  """
  try:
    prompt.encode("utf-8")
  except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as surrogates
    raise UserError(f"--prompt is not valid UTF-8 (at character {e.start})") from None
  tokens, known = [], []
  pieces = _BLANK.split(prompt)  # text, N, text, N, ..., text
  blanks = 0
  for piece in pieces[1::2]:
    if not piece.strip().isdigit() or int(piece) < 1:
      raise UserError(f"malformed blank <blank:{piece}> in --prompt: write <blank:N> "
                      "with N >= 1")
    blanks += int(piece)
  if max_len is not None and blanks + max_new_tokens > max_len:
    raise UserError(f"--prompt blanks and --max_new_tokens ask for {blanks + max_new_tokens} "
                    f"tokens, more than the model's maximum of {max_len}")
  for i, piece in enumerate(pieces):
    if i % 2:
      tokens += [0] * int(piece)
      known += [False] * int(piece)
    elif piece:
      ids = tokenizer.encode(piece)
      tokens += ids
      known += [True] * len(ids)
  tokens += [0] * max_new_tokens
  known += [False] * max_new_tokens
  if all(known):
    raise UserError("nothing to generate: put <blank:N> in --prompt or set --max_new_tokens")
  return np.asarray(tokens, np.int32), np.asarray(known, bool)


def render(tokenizer, tokens_T, groups_T, length: int, logprob: float) -> dict:
  """One sample: its text (up to EOS), log-prob, and the commit order of its tokens."""
  keep = np.flatnonzero(groups_T[:length] >= 0)
  generated = keep[groups_T[keep] > 0]
  steps = {}
  for i in generated:
    steps.setdefault(int(groups_T[i]), []).append(
        {"position": int(i), "token": int(tokens_T[i]), "text": tokenizer.decode([tokens_T[i]])})
  return {"text": tokenizer.decode(tokens_T[keep]), "logprob": float(logprob),
          "generated_tokens": int(len(generated)), "tokens": tokens_T[keep].tolist(),
          "groups": groups_T[keep].tolist(),
          "steps": [{"step": s, "committed": steps[s]} for s in sorted(steps)]}


def format_sample(index: int, sample: dict, show_order: bool) -> str:
  lines = [f"--- sample {index} ---", sample["text"],
           f"log p = {sample['logprob']:.4f} ({sample['generated_tokens']} generated tokens, "
           f"{len(sample['steps'])} steps)"]
  if show_order:
    for step in sample["steps"]:
      lines.append(f"step {step['step']:>3}: " + "  ".join(
          f"{c['position']}:{c['text']!r}" for c in step["committed"]))
  return "\n".join(lines)
