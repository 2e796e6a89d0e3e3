"""Document sources: random-access sequences of texts, named by a spec string.

    shakespeare             the embedded corpus; `split` picks train or validation
    text:GLOB               .txt files (one document each) and .jsonl files (one
                            document per non-blank line: the `text` field)
    arrayrecord:GLOB        ArrayRecord files; each record is UTF-8 text or a JSON
                            object with a `text` field
    tfds:NAME[:SPLIT]       a prepared tfds dataset (array_record format) with a
                            `text` feature; SPLIT (default: `split`) may use tfds
                            slicing, e.g. `train[:10%]`; NAME may name a config

Every source here is a `Sequence[str]` (`len`, `source[i]`, iteration), which is
all `grain.MapDataset.source` needs; `text:` and `arrayrecord:` ignore `split`.
`parquet:` and `jsonl:` (the shards of FineWeb, SlimPajama and the like) are
read file by file instead: `data.streams`. The grammar of all specs: `data.spec`.
GLOBs are local paths (`**` recursive) or URIs such as gs://bucket/dir/*.parquet
(through etils.epath, which needs gcsfs for gs://).
"""

from __future__ import annotations

import abc
import glob
import json
import os
import re
from collections.abc import Sequence

import grain
import numpy as np

from etils import epath

from a3_jax.data import corpus
from a3_jax.data.spec import parse_source
from a3_jax.errors import UserError


def json_value(line: bytes | str, where: str):
  """One line of JSON, parsed; a UserError naming `where` if it is not JSON or UTF-8."""
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{where}: not JSON ({e})") from None
  except UnicodeDecodeError as e:
    raise UserError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None


def json_text(line: bytes | str, where: str, field: str = "text") -> str:
  """The string `field` of one JSON object."""
  document = json_value(line, where)
  if not isinstance(document, dict) or not isinstance(document.get(field), str):
    raise UserError(f"{where}: expected a JSON object with a string {field!r} field")
  return document[field]


def _record_text(record: bytes | str, where: str) -> str:
  """A record's text: the `text` field of a JSON object, else the UTF-8 text itself."""
  try:
    text = record.decode("utf-8") if isinstance(record, bytes) else record
  except UnicodeDecodeError as e:
    raise UserError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
  if text.startswith("{"):
    try:
      document = json.loads(text)
    except json.JSONDecodeError:
      return text  # Plain text that happens to start with '{'.
    if isinstance(document, dict):
      return json_text(text, where)
  return text


def _line_offsets(path: str) -> np.ndarray:
  """[num_documents, 2]: byte offset and line number (from 1) of each non-blank line
  of a .jsonl file."""
  offsets, position = [], 0
  with open(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      if line.strip():
        offsets.append((position, number))
      position += len(line)
  return np.asarray(offsets, np.int64).reshape(-1, 2)


class _DocumentSource(Sequence[str]):
  """A random-access source of documents; subclasses read document `index` in `_document`."""

  def __getitem__(self, index: int) -> str:
    if not 0 <= index < len(self):
      raise IndexError(f"document {index} of {len(self)}")  # Also ends plain iteration.
    return self._document(int(index))

  @abc.abstractmethod
  def _document(self, index: int) -> str:
    """Document `index`, already known to be in range."""

  def first_documents(self) -> list[int]:
    """Indices of the first document of each file (read before a run writes anything)."""
    return [0] if len(self) else []


class TextFileSource(_DocumentSource):
  """Documents of .txt files (whole file) and .jsonl files (one per line), read lazily."""

  def __init__(self, paths: Sequence[str]):
    self._paths = list(paths)
    # None for a .txt file (one document); byte offsets of its lines for .jsonl.
    self._offsets = [None if p.endswith(".txt") else _line_offsets(p) for p in self._paths]
    self._ends = np.cumsum([1 if o is None else len(o) for o in self._offsets])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def _document(self, index: int) -> str:
    file_index = int(np.searchsorted(self._ends, index, side="right"))
    path, offsets = self._paths[file_index], self._offsets[file_index]
    if offsets is None:
      try:
        with open(path, encoding="utf-8", newline="") as f:  # newline="": keep '\r' as written.
          return f.read()
      except UnicodeDecodeError as e:
        raise UserError(f"text file {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    offset, number = offsets[index - (int(self._ends[file_index - 1]) if file_index else 0)]
    with open(path, "rb") as f:
      f.seek(offset)
      line = f.readline()
    return json_text(line, f"{path}, line {number}")

  def first_documents(self) -> list[int]:
    starts = np.concatenate([[0], self._ends[:-1]])
    return [int(s) for s, e in zip(starts, self._ends) if e > s]

  def __repr__(self) -> str:
    return f"TextFileSource({len(self._paths)} files, {len(self)} documents)"


class ArrayRecordTextSource(_DocumentSource):
  """Documents of ArrayRecord files (via grain.sources.ArrayRecordDataSource)."""

  def __init__(self, paths: Sequence[str]):
    self._records = grain.sources.ArrayRecordDataSource(list(paths))

  def __len__(self) -> int:
    return len(self._records)

  def _document(self, index: int) -> str:
    return _record_text(self._records[index], f"ArrayRecord record {index}")

  def __repr__(self) -> str:
    return f"ArrayRecordTextSource({len(self)} documents)"


class TfdsTextSource(_DocumentSource):
  """The `text` feature (bytes or str) of a tfds random-access data source."""

  def __init__(self, records):
    self._records = records

  def __len__(self) -> int:
    return len(self._records)

  def _document(self, index: int) -> str:
    text = self._records[index]["text"]
    return text.decode("utf-8") if isinstance(text, bytes) else text

  def __repr__(self) -> str:
    return f"TfdsTextSource({self._records!r})"


def _uri_glob(pattern: str) -> list[str]:
  """The files matching a URI glob (gs://bucket/dir/*.parquet), through etils.epath."""
  scheme, _, rest = pattern.partition("://")
  parts = rest.split("/")
  fixed = next((i for i, part in enumerate(parts) if re.search(r"[*?\[]", part)), len(parts))
  try:
    base = epath.Path(f"{scheme}://" + "/".join(parts[:fixed]))
  except KeyError:
    raise UserError(f"{pattern!r}: etils.epath reads no {scheme}:// paths") from None
  if fixed == len(parts):
    return [str(base)] if base.is_file() else []
  return [str(p) for p in base.glob("/".join(parts[fixed:])) if p.is_file()]


def glob_files(spec: str, pattern: str, extensions: tuple[str, ...] | None = None) -> list[str]:
  """The files matching `pattern`, sorted; each must end in one of `extensions` (None: any)."""
  if "://" in pattern:
    paths = sorted(_uri_glob(pattern))
  else:
    matches = glob.glob(os.path.expanduser(pattern), recursive=True)
    paths = sorted(p for p in matches if os.path.isfile(p))
  if not paths:
    raise UserError(f"source {spec!r}: no files match {pattern!r}")
  unsupported = [p for p in paths if extensions and not p.endswith(extensions)]
  if unsupported:
    raise UserError(f"source {spec!r}: {unsupported[0]!r} is not one of {extensions}")
  return paths


def _tfds_source(spec: str, name: str, split: str, data_dir: str | None) -> TfdsTextSource:
  import tensorflow_datasets as tfds  # Imported here: ~1 s, and only this scheme needs it.

  # `tfds.data_source(name, split=, data_dir=, download=False)` in two steps, so
  # that an unprepared dataset gets a clear message, not tfds' hint about TFRecords.
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"source {spec!r}: no tfds dataset named {name!r} is registered") from None
  if not builder.is_prepared():
    raise UserError(f"source {spec!r}: tfds dataset {name!r} is not prepared in "
                     f"{builder.data_dir} (build it with file_format='array_record'; "
                     "nothing is downloaded here)")
  if "text" not in builder.info.features:
    raise UserError(f"source {spec!r}: tfds dataset {name!r} has no 'text' feature "
                     f"(features: {sorted(builder.info.features)})")
  try:
    return TfdsTextSource(builder.as_data_source(split=split))
  except (ValueError, NotImplementedError) as e:  # An unknown split, or not array_record.
    raise UserError(f"source {spec!r}: {e}") from None


def make_source(spec: str, *, split: str = "train", data_dir: str | None = None) -> Sequence[str]:
  """The document source named by `spec` (see the module docstring).

  `split` is the embedded corpus' split ("train", "validation", "all") and the
  default tfds split; `data_dir` is the tfds data directory (None: tfds' default).
  Raises ValueError for an unknown scheme, a glob that matches nothing, or a
  missing tfds dataset or split.
  """
  source = parse_source(spec)
  if source.scheme == "shakespeare":
    return tuple(text for _, text in corpus.load_works(split))
  if "://" in source.target and source.scheme in ("text", "arrayrecord"):
    raise UserError(f"source {spec!r}: {source.scheme}: reads local files; for gs:// and "
                     "other URIs use jsonl:GLOB or parquet:GLOB")
  if source.scheme == "text":
    return TextFileSource(glob_files(spec, source.target, (".txt", ".jsonl")))
  if source.scheme == "arrayrecord":
    return ArrayRecordTextSource(glob_files(spec, source.target))
  if source.scheme == "tfds":
    name, _, tfds_split = source.target.partition(":")
    return _tfds_source(spec, name, tfds_split or split, data_dir)
  raise UserError(f"source {spec!r} is read file by file (a3_jax.data.streams), "
                   "not by random access")
