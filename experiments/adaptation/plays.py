"""Tasks built from play texts (the embedded corpus' format): items for the suite.

A play is a sequence of speeches separated by blank lines; a speech starts with
its speaker's line (`MACBETH.`, upper case, ending in a period), and bracketed
lines (`[Exit Soldier.]`) are stage directions. From a play (or, for passages,
any text) this module builds:

  cloze_examples     HellaSwag-style: a context of the play's last few non-empty
                     lines before a spoken line, and 4 candidate next lines: the
                     true one and 3 spoken lines from elsewhere in the same play of
                     similar length (scored by mean token log-prob, as HellaSwag)
  speaker_examples   which character speaks a speech: the previous lines as context,
                     4 continuations `NAME.` + the speech's first lines, the true
                     speaker's and 3 other frequent speakers' of the same play (the
                     speech is shared, so the summed log-prob compares the names)
  passages           ROCStories-style: 5 consecutive lines of one speech (or one
                     paragraph of plain text), the middle line to be infilled

Items are drawn with a seeded generator, so every model sees the same items.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from a3_jax.errors import UserError
from a3_jax.tasks.infill import Story
from a3_jax.tasks.multiple_choice import ChoiceExample

_SPEAKER = re.compile(r"^[A-Z][A-Z0-9 ,&'\-]*\.$")
_HEADING = re.compile(r"^(ACT|SCENE|EPILOGUE|PROLOGUE)\b")


def is_heading(line: str) -> bool:
  return bool(_HEADING.match(line.strip()))


def is_speaker(line: str) -> bool:
  return bool(_SPEAKER.match(line.strip())) and not is_heading(line)


def is_direction(line: str) -> bool:
  text = line.strip()
  return text.startswith("[") or text.endswith("]")


@dataclasses.dataclass(frozen=True)
class Line:
  """A non-empty line of a text: its words, where it starts, its speaker (or '')."""

  text: str
  start: int
  speaker: str
  spoken: bool  # a line of a speech (not a speaker's line, a direction or a heading)


def lines_of(text: str) -> list[Line]:
  """Every non-empty line with its character offset and current speaker (none before
  a play's first ACT heading: the list of persons is not dialogue)."""
  out, speaker, offset = [], "", 0
  started = not re.search(r"^ACT\b", text, re.M)
  for raw in text.split("\n"):
    stripped = raw.strip()
    started = started or stripped.startswith("ACT")
    if not stripped:
      speaker = speaker if out and out[-1].spoken else ""
    elif is_heading(stripped) or not started:
      speaker = ""
      out.append(Line(raw, offset, "", False))
    elif is_speaker(stripped):
      speaker = stripped[:-1]
      out.append(Line(raw, offset, speaker, False))
    else:
      spoken = bool(speaker) and not is_direction(stripped)
      out.append(Line(raw, offset, speaker if spoken else "", spoken))
    offset += len(raw) + 1
  return out


def _pick(rng: np.random.Generator, candidates: Sequence, n: int) -> list:
  if not candidates:
    return []
  chosen = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
  return [candidates[i] for i in sorted(chosen)]


def cloze_examples(text: str, n: int, *, seed: int = 0, context_lines: int = 4,
                   min_chars: int = 20, length_tolerance: float = 0.25,
                   min_distance: int = 40) -> list[ChoiceExample]:
  """Up to n HellaSwag-style items from one play (see the module docstring).

  Distractors are spoken lines at least `min_distance` lines away whose length is
  within `length_tolerance` of the true line's (relative, in characters).
  """
  lines = lines_of(text)
  spoken = [i for i, ln in enumerate(lines)
            if ln.spoken and len(ln.text.strip()) >= min_chars and i >= context_lines]
  rng = np.random.default_rng(seed)
  out = []
  for i in _pick(rng, spoken, 2 * n):
    target = lines[i].text.strip()
    pool = [j for j in spoken if abs(j - i) >= min_distance
            and abs(len(lines[j].text.strip()) - len(target)) <= length_tolerance * len(target)
            and lines[j].text.strip() != target]
    if len(pool) < 3:
      continue
    distractors = [lines[j].text.strip() for j in rng.choice(pool, 3, replace=False)]
    context = text[lines[i - context_lines].start:lines[i].start]
    label = int(rng.integers(4))
    endings = distractors[:label] + [target] + distractors[label:]
    out.append(ChoiceExample(tuple((context, e) for e in endings), label))
    if len(out) == n:
      break
  return out


def speaker_examples(text: str, n: int, *, seed: int = 0, context_lines: int = 4,
                     speech_lines: int = 2, min_speeches: int = 5) -> list[ChoiceExample]:
  """Up to n 'who speaks this?' items from one play (see the module docstring).

  Candidates are the play's speakers with at least `min_speeches` speeches.
  """
  lines = lines_of(text)
  heads = [i for i, ln in enumerate(lines) if not ln.spoken and ln.speaker
           and i >= context_lines and i + 1 < len(lines) and lines[i + 1].spoken]
  counts: dict[str, int] = {}
  for i in heads:
    counts[lines[i].speaker] = counts.get(lines[i].speaker, 0) + 1
  frequent = sorted(s for s, c in counts.items() if c >= min_speeches)
  if len(frequent) < 4:
    raise UserError(f"a play needs 4 speakers with >= {min_speeches} speeches for the "
                     f"speaker task; this one has {len(frequent)}")
  rng = np.random.default_rng(seed)
  out = []
  for i in _pick(rng, [i for i in heads if lines[i].speaker in frequent], n):
    who = lines[i].speaker
    speech = []
    for ln in lines[i + 1:i + 1 + speech_lines]:
      if not ln.spoken or ln.speaker != who:
        break
      speech.append(ln.text)
    others = [s for s in frequent if s != who]
    names = list(rng.choice(others, 3, replace=False))
    label = int(rng.integers(4))
    names = names[:label] + [who] + names[label:]
    context = text[lines[i - context_lines].start:lines[i].start]
    body = "\n".join(speech)
    out.append(ChoiceExample(tuple((context, f"{name}.\n{body}") for name in names), label))
  return out


@dataclasses.dataclass(frozen=True)
class LinePassage(Story):
  """A Story of 5 lines: the newlines around the middle line belong to the given text."""

  @property
  def prefix(self) -> str:
    return "\n".join(self.sentences[:2]) + "\n"

  @property
  def suffix(self) -> str:
    return "\n" + "\n".join(self.sentences[3:])


def passages(text: str, n: int, *, seed: int = 0, min_middle_chars: int = 10,
             max_middle_chars: int = 80) -> list[LinePassage]:
  """Up to n non-overlapping runs of 5 consecutive lines of one speech (plays) or one
  paragraph (any text: a run of non-empty lines without speaker lines or
  directions), the middle line of `min_middle_chars`..`max_middle_chars` characters."""
  lines, runs, run = lines_of(text), [], []
  has_speakers = any(ln.speaker for ln in lines)
  previous_end = -2
  for ln in lines:
    usable = ln.spoken if has_speakers else not is_direction(ln.text)
    contiguous = text[previous_end:ln.start].count("\n") <= 1 if run else True
    same = not run or (contiguous and ln.speaker == run[-1].speaker)
    if not (usable and same):
      runs.append(run)
      run = []
    if usable:
      run.append(ln)
    previous_end = ln.start + len(ln.text)
  runs.append(run)
  starts = []
  for run in runs:
    for s in range(0, len(run) - 4, 5):
      middle = run[s + 2].text.strip()
      if min_middle_chars <= len(middle) <= max_middle_chars:
        starts.append(tuple(ln.text.strip() for ln in run[s:s + 5]))
  return [LinePassage(p) for p in _pick(np.random.default_rng(seed), starts, n)]
