"""Prompts with `<blank:N>` markers -> (tokens, known); decoded rows -> text and commit order.

`<blank:MIN-MAX>` (at most one per prompt) is a blank of unknown length: the
prompt becomes a `LengthTemplate`, whose length `blank_length` chooses.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from a3_jax.errors import UserError

_BLANK = re.compile(r"<blank:([^>]*)>")
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def parse_prompt(prompt: str, tokenizer, max_new_tokens: int, max_len: int | None = None):
  """(tokens [T], known [T]) of a prompt with <blank:N> markers and trailing blanks.

  max_len: the model's longest sequence; blanks beyond it are refused before any
  memory is taken for them.
  """
  tokens, known = _encode(_utf8(prompt), tokenizer, max_new_tokens, max_len)
  if all(known):
    raise UserError("nothing to generate: put <blank:N> in --prompt or set --max_new_tokens")
  return tokens, known


def _utf8(prompt: str) -> str:
  try:
    prompt.encode("utf-8")
  except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as surrogates
    raise UserError(f"--prompt is not valid UTF-8 (at character {e.start})") from None
  return prompt


def _encode(text: str, tokenizer, max_new_tokens: int, max_len: int | None, extra: int = 0):
  """(tokens, known) of text with <blank:N> markers; `extra` more blanks count
  against max_len (a blank of unknown length elsewhere in the prompt)."""
  pieces = _BLANK.split(text)  # text, N, text, N, ..., text
  blanks = extra
  for piece in pieces[1::2]:
    if _RANGE.match(piece):
      raise UserError(f"unexpected blank of unknown length <blank:{piece}> (at most one "
                      "per prompt)")
    if not piece.strip().isdigit() or int(piece) < 1:
      raise UserError(f"malformed blank <blank:{piece}> in --prompt: write <blank:N> "
                      "with N >= 1, or <blank:MIN-MAX> for a blank of unknown length")
    blanks += int(piece)
  if max_len is not None and blanks + max_new_tokens > max_len:
    raise UserError(f"--prompt blanks and --max_new_tokens ask for {blanks + max_new_tokens} "
                    f"tokens, more than the model's maximum of {max_len}")
  tokens, known = [], []
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
  return np.asarray(tokens, np.int32), np.asarray(known, bool)


class LengthTemplate(NamedTuple):
  """A prompt around one blank of unknown length: the parts before and after it
  (tokens and known masks; `after` ends with the --max_new_tokens blanks) and the
  candidate lengths."""

  before_tokens: np.ndarray
  before_known: np.ndarray
  after_tokens: np.ndarray
  after_known: np.ndarray
  lengths: range

  def fill(self, length: int):
    """(tokens [T], known [T]) with a blank of `length` tokens."""
    return (np.concatenate([self.before_tokens, np.zeros(length, np.int32), self.after_tokens]),
            np.concatenate([self.before_known, np.zeros(length, bool), self.after_known]))


def parse_length_template(prompt: str, tokenizer, max_new_tokens: int,
                          max_len: int | None = None) -> LengthTemplate | None:
  """The LengthTemplate of a prompt with one <blank:MIN-MAX>, or None if it has none.
  max_len: as for parse_prompt (the longest candidate counts)."""
  ranges = [m for m in _BLANK.finditer(_utf8(prompt)) if _RANGE.match(m.group(1))]
  if not ranges:
    return None
  if len(ranges) > 1:
    raise UserError("at most one blank of unknown length <blank:MIN-MAX> per prompt")
  m = ranges[0]
  lo, hi = (int(x) for x in _RANGE.match(m.group(1)).groups())
  if not 1 <= lo <= hi:
    raise UserError(f"malformed blank <blank:{m.group(1)}>: need 1 <= MIN <= MAX")
  before = _encode(prompt[:m.start()], tokenizer, 0, None)
  after = _encode(prompt[m.end():], tokenizer, max_new_tokens, max_len,
                  extra=hi + int((~before[1]).sum()))
  if not after[1].any():
    raise UserError(f"<blank:{m.group(1)}> needs known text after it: its length is chosen "
                    "by how well that text follows")
  return LengthTemplate(*before, *after, range(lo, hi + 1))


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
           f"{len(sample['steps'])} steps" + (f", {sample['model_calls']} model calls)"
                                              if "model_calls" in sample else ")")]
  if show_order:
    for step in sample["steps"]:
      lines.append(f"step {step['step']:>3}: " + "  ".join(
          f"{c['position']}:{c['text']!r}" for c in step["committed"]))
  return "\n".join(lines)
