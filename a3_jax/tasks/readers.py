"""Task records from the public file formats or a prepared tfds dataset.

  PATH.jsonl          one JSON object per non-blank line (HellaSwag, WinoGrande,
                      PIQA, SIQA, TriviaQA as published or as on the HF hub)
  PATH.json           a JSON list of objects, or TriviaQA's {"Data": [...]}
  PATH.csv            a header row, one record per row (ROCStories / Story Cloze)
  tfds:NAME[:SPLIT]   `tfds.data_source(NAME, split=SPLIT)` of a prepared dataset
                      (no download; SPLIT defaults to validation)

Every record becomes a plain dict of str / int / list / dict (tfds bytes decoded).
PIQA and SIQA publish labels in a sibling `<name>-labels.lst` (one per line):
`sibling_labels` reads it.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Sequence

import numpy as np
from a3_jax.errors import UserError


def _plain(value: Any) -> Any:
  """tfds values (bytes, numpy scalars and arrays) as plain Python values."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _read_jsonl(path: str) -> list[dict]:
  records = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise UserError(f"task file {path}, line {n}: not JSON ({e})") from None
  return records


def _read_json(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"task file {path}: not JSON ({e})") from None
  if isinstance(data, dict) and isinstance(data.get("Data"), list):
    data = data["Data"]
  if not isinstance(data, list):
    raise UserError(f"task file {path}: expected a JSON list of records or {{'Data': [...]}}")
  return data


def _read_csv(path: str) -> list[dict]:
  with open(path, encoding="utf-8", newline="") as f:
    return [dict(row) for row in csv.DictReader(f)]


def _read_tfds(spec: str) -> list[dict]:
  name, _, split = spec[len("tfds:"):].partition(":")
  if not name:
    raise UserError(f"task data {spec!r} names no dataset; expected tfds:NAME[:SPLIT]")
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split or "validation", download=False)
  except Exception as e:  # tfds raises several types for an unprepared dataset
    raise UserError(f"task data {spec!r}: cannot open the prepared tfds dataset "
                     f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
  return [_plain(source[i]) for i in range(len(source))]


def read_records(spec: str) -> list[dict]:
  """Records of a task file or tfds dataset (see the module docstring), in order."""
  if spec.startswith("tfds:"):
    records = _read_tfds(spec)
  else:
    if os.path.isdir(spec):
      raise UserError(f"--task_data={spec} is a directory, not a task file")
    if not os.path.isfile(spec):
      raise UserError(f"task file {spec} does not exist")
    ext = os.path.splitext(spec)[1].lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}
    if ext not in readers:
      raise UserError(f"task file {spec}: unknown format {ext!r}; expected .jsonl, .json "
                       "or .csv (or tfds:NAME[:SPLIT])")
    try:
      records = readers[ext](spec)
    except UnicodeDecodeError as e:
      raise UserError(f"task file {spec} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  if not records:
    raise UserError(f"task data {spec} holds no records")
  bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
  if bad is not None:
    raise UserError(f"task data {spec}, record {bad}: expected an object")
  return [_plain(r) for r in records]


def get(record: dict, names: Sequence[str], where: str) -> Any:
  """The value of the first of `names` present in record; a clear error if none is."""
  for name in names:
    if record.get(name) is not None:
      return record[name]
  wanted = " or ".join(repr(n) for n in names)
  raise UserError(f"{where}: missing field {wanted}")


def sibling_labels(spec: str) -> list[str] | None:
  """Lines of `<stem>-labels.lst` beside a task file, if it exists."""
  if spec.startswith("tfds:"):
    return None
  path = os.path.splitext(spec)[0] + "-labels.lst"
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]
