"""Documents of a text file to score: a .jsonl file holds one per line, any other file one."""

from __future__ import annotations

import os

from a3_jax.data.corpus import SPLITS, load_works
from a3_jax.data.sources import json_text
from a3_jax.errors import UserError


def read_texts(path: str) -> list[str]:
  """Documents of a text file: one per line of a .jsonl file (`text`), else the whole
  file; `shakespeare:SPLIT` names the embedded plays of a split."""
  if path.startswith("shakespeare:"):
    split = path.partition(":")[2]
    if split not in SPLITS:
      raise UserError(f"--text_file={path}: the embedded corpus has splits {SPLITS}")
    return [text for _, text in load_works(split)]
  if os.path.isdir(path):
    raise UserError(f"--text_file={path} is a directory, not a text file")
  if not os.path.isfile(path):
    raise UserError(f"--text_file={path} does not exist")
  try:
    with open(path, encoding="utf-8", newline="") as f:
      content = f.read()
  except UnicodeDecodeError as e:
    raise UserError(f"--text_file={path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  if not content.strip():
    raise UserError(f"text file {path} is empty")
  if not path.endswith(".jsonl"):
    return [content]
  return [json_text(line, f"text file {path}, line {n}")
          for n, line in enumerate(content.splitlines(), 1) if line.strip()]


def encode_texts(tokenizer, texts: list[str], path: str, need: int) -> list[list[int]]:
  """Token ids of each text; every document must hold at least `need` tokens."""
  ids = [tokenizer.encode(t) for t in texts]
  for n, t in enumerate(ids):
    if len(t) < need:
      raise UserError(f"text file {path}: document {n} is {len(t)} token(s) long; this "
                       f"evaluation needs at least {need}")
  return ids
