"""Marked texts: a text whose spans say what is scored and what is given.

  [[...]]    the target A: its tokens are scored
  {{...}}    the condition B: its tokens are given
  the rest   absent: its tokens are removed (the model knows that positions are
             there, not what they hold); with unmarked='condition' it joins B

`a3-eval --conditional=TEXT` reports log p(x_A | x_B) (conditional.py):

  "{{The capital of France is}} [[Paris]]."          the answer given the question
  "[[The capital of France is]] {{Paris}}."          the reversal: the question given
                                                     the answer, to its right
  "{{Fair is}} [[foul]] and [[foul]] {{is fair}}"    two spans, '... and' unknown

Spans do not nest and are never empty; a literal '[[', ']]', '{{' or '}}'
cannot appear outside its role. The spaces that end a piece belong to the
piece after it (as lm-evaluation-harness moves a context's trailing spaces into
the continuation), so a word-initial token keeps its space. Each segment's tokens are those of the whole text up to its end minus
those before it, when the earlier tokens are a prefix (token boundaries fall
on the span boundaries); otherwise the segment is encoded alone.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from a3_jax import conditional
from a3_jax.config import ModelConfig
from a3_jax.errors import UserError

_SPAN = re.compile(r"\[\[(.*?)\]\]|\{\{(.*?)\}\}", re.S)
_MARKS = ("[[", "]]", "{{", "}}")
ROLES = {"target": 1, "condition": conditional.CONDITION, "absent": conditional.ABSENT}
UNMARKED = ("absent", "condition")


@dataclasses.dataclass(frozen=True)
class MarkedItem:
  """tokens [n]; role [n]: 1 target, 0 condition, -1 absent; span [n]: index of the
  segment each token came from (target spans are told apart by it)."""

  text: str
  tokens: np.ndarray
  role: np.ndarray
  span: np.ndarray


def segments(text: str, unmarked: str = "absent") -> list[tuple[str, str]]:
  """(role, text) pieces of a marked text, in order; see the module docstring."""
  if unmarked not in UNMARKED:
    raise UserError(f"unmarked text must be one of {UNMARKED}, got {unmarked!r}")
  pieces, at = [], 0
  for m in _SPAN.finditer(text):
    pieces.append((unmarked, text[at:m.start()]))
    role, body = ("target", m.group(1)) if m.group(1) is not None else ("condition", m.group(2))
    if not body.strip():
      raise UserError(f"marked text {text!r}: an empty {role} span")
    pieces.append((role, body))
    at = m.end()
  pieces.append((unmarked, text[at:]))
  for _, body in pieces:
    bad = [mark for mark in _MARKS if mark in body]
    if bad:
      raise UserError(f"marked text {text!r}: stray or nested {bad[0]!r} (spans are "
                      "[[target]] and {{condition}}, not nested)")
  if not any(role == "target" for role, _ in pieces):
    raise UserError(f"marked text {text!r} has no [[target]] span")
  out = []
  for i, (role, body) in enumerate(pieces):  # trailing spaces move to the next piece
    if i + 1 < len(pieces):
      kept = body.rstrip(" ")
      pieces[i + 1] = (pieces[i + 1][0], body[len(kept):] + pieces[i + 1][1])
      body = kept
    if body:
      out.append((role, body))
  return out


def encode_marked(tokenizer, text: str, unmarked: str = "absent") -> MarkedItem:
  """Token ids and roles of a marked text (see the module docstring)."""
  ids: list[int] = []
  role: list[int] = []
  span: list[int] = []
  prefix = ""
  for s, (kind, body) in enumerate(segments(text, unmarked)):
    whole = tokenizer.encode(prefix + body)
    new = whole[len(ids):] if whole[:len(ids)] == ids else tokenizer.encode(body)
    ids += new
    role += [ROLES[kind]] * len(new)
    span += [s] * len(new)
    prefix += body
  item = MarkedItem(text, np.asarray(ids, np.int32), np.asarray(role, np.int32),
                    np.asarray(span, np.int32))
  if not np.any(item.role == 1):
    raise UserError(f"marked text {text!r}: the target encodes to no tokens")
  return item


def score_marked(params, config: ModelConfig, tokenizer, texts: Sequence[str], *,
                 grouping: str = "ar", unmarked: str = "absent", seed: int = 0,
                 batch_size: int = 8) -> list[dict]:
  """log p(x_A | x_B) of each marked text, A ordered by `grouping`
  (conditional.target_groups); one dict per text."""
  items = [encode_marked(tokenizer, t, unmarked) for t in texts]
  groups = []
  for i, item in enumerate(items):
    g = item.role.copy()
    target = item.role == 1
    g[target] = conditional.target_groups(int(target.sum()), grouping,
                                          span_ids=item.span[target], seed=seed, item=i)
    groups.append(g)
  scores = conditional.conditional_logprobs(params, config, [it.tokens for it in items],
                                            groups, batch_size=batch_size)
  out = []
  for i, (item, g) in enumerate(zip(items, groups)):
    target = item.role == 1
    ids = item.tokens[target]
    out.append({
        "text": item.text, "grouping": grouping, "logp": float(scores.logp[i]),
        "target_tokens": int(scores.targets[i]),
        "condition_tokens": int(np.sum(item.role == 0)),
        "absent_tokens": int(np.sum(item.role == -1)),
        "nll_per_target_token": -float(scores.logp[i]) / int(scores.targets[i]),
        "greedy": bool(scores.greedy[i]),
        "targets": [{"token": tokenizer.decode([int(t)]), "id": int(t), "group": int(k),
                     "logp": float(lp)}
                    for t, k, lp in zip(ids, g[target], scores.token_logp[i])]})
  return out


def format_marked(results: Sequence[dict]) -> str:
  lines = []
  for r in results:
    lines.append(f"log p(A|B) = {r['logp']:.4f} nats ({r['target_tokens']} target, "
                 f"{r['condition_tokens']} condition, {r['absent_tokens']} absent tokens; "
                 f"grouping {r['grouping']}; greedy={r['greedy']}): {r['text']}")
    lines.append("  " + " ".join(f"{t['token']!r}@{t['group']}:{t['logp']:.3f}"
                                 for t in r["targets"]))
  return "\n".join(lines)
