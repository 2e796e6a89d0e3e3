"""Streamed sources: Parquet and JSON-lines shards, read file by file as grain IterDatasets.

    parquet:GLOB[#COLUMN]   Parquet files (grain's ParquetIterDataset); a string COLUMN,
                            default `text` (FineWeb's)
    jsonl:GLOB[#FIELD]      .jsonl, .jsonl.gz and .jsonl.zst files, one JSON object per
                            non-blank line with a string FIELD, default `text` (SlimPajama's)

Corpora of this size come as shards too big to index document by document, so
a host reads whole files: its share is files[host::hosts], in a new seeded order
every epoch, `cycle_length` files at a time, their documents interleaved. The
iterator state is the position in that file order plus the row of each open
file, so a restored stream continues exactly (a .jsonl file is re-read up to the
row: compressed streams cannot seek).

Globs go through etils.epath (gcsfs for gs://), JSON lines are read through it
too; Parquet files through pyarrow's own filesystems (its GCS one for gs://,
with the same Google default credentials).
"""

from __future__ import annotations

import functools
import gzip
import io

import grain
from etils import epath

from a3_jax.data.sources import glob_files, json_text
from a3_jax.data.spec import JSONL_SUFFIXES, Source
from a3_jax.errors import UserError

CYCLE_LENGTH = 8  # files open at once per source and host: their documents interleave


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def source_files(source: Source) -> list[str]:
  """The files of a streamed source, sorted; a UserError when none match or one has
  another extension."""
  extensions = (".parquet",) if source.scheme == "parquet" else JSONL_SUFFIXES
  return glob_files(source.spec, source.target, extensions)


def _parquet_text(column: str, row: dict) -> str:
  text = row[column]
  return "" if text is None else str(text)  # a null cell: an empty document


def _parquet_documents(path: str, column: str) -> grain.IterDataset:
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    footer = pq.read_metadata(path)  # the footer only: checks the format and the column
  except (pa.ArrowException, OSError) as e:
    raise UserError(f"{path} is not a Parquet file ({_first_line(e)})") from None
  schema = footer.schema.to_arrow_schema()
  if column not in schema.names:
    raise UserError(f"{path} has no column {column!r} (columns: {', '.join(schema.names)}); "
                     "name the text column with parquet:GLOB#COLUMN")
  if not (pa.types.is_string(schema.field(column).type)
          or pa.types.is_large_string(schema.field(column).type)):
    raise UserError(f"{path}: column {column!r} holds {schema.field(column).type}, not text")
  if not footer.num_row_groups:  # (grain's reader expects at least one)
    return grain.MapDataset.source([]).to_iter_dataset()
  return grain.experimental.ParquetIterDataset(path).map(
      functools.partial(_parquet_text, column))


class _JsonlIterator(grain.DatasetIterator):
  """The `field` of each non-blank line of one .jsonl[.gz|.zst] file; state: lines read."""

  def __init__(self, path: str, field: str):
    super().__init__()
    self._path, self._field = path, field
    self._file = None
    self._lines = 0

  def _open(self):
    raw = epath.Path(self._path).open("rb")
    if self._path.endswith(".gz"):
      return gzip.GzipFile(fileobj=raw)
    if self._path.endswith(".zst"):
      import pyarrow as pa
      return io.BufferedReader(pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd"))
    return raw

  def _readline(self) -> bytes:
    if self._file is None:
      self._file = self._open()
    try:
      return self._file.readline()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; so is a zstd error
      kind = self._path.rpartition(".jsonl")[2] or ".jsonl"
      raise UserError(f"{self._path} is not a {kind[1:]}-compressed file "
                       f"({_first_line(e)})") from None

  def __next__(self) -> str:
    while True:
      line = self._readline()
      if not line:
        raise StopIteration
      self._lines += 1
      if line.strip():
        return json_text(line, f"{self._path}, line {self._lines}", self._field)

  def get_state(self) -> dict:
    return {"lines": self._lines}

  def set_state(self, state: dict) -> None:
    if self._file is not None:
      self._file.close()
    self._file, self._lines = None, 0
    while self._lines < state["lines"] and self._readline():
      self._lines += 1


class _JsonlDocuments(grain.IterDataset):
  def __init__(self, path: str, field: str):
    super().__init__()
    self._path, self._field = path, field

  def __iter__(self) -> _JsonlIterator:
    return _JsonlIterator(self._path, self._field)


def file_documents(source: Source, path: str) -> grain.IterDataset:
  """The documents (str) of one file of a streamed source, in file order."""
  if source.scheme == "parquet":
    return _parquet_documents(path, source.column)
  return _JsonlDocuments(path, source.column)


def train_documents(source: Source, seed: int, host: int, hosts: int,
                    cycle_length: int = CYCLE_LENGTH) -> grain.IterDataset:
  """This host's endless stream of documents: its files in a new seeded order every
  epoch, `cycle_length` of them interleaved."""
  files = source_files(source)
  host_files = files[host::hosts]
  if not host_files:
    raise UserError(f"source {source.spec!r} has {len(files)} files, too few for {hosts} hosts "
                     "to read at least one each (each host reads its own files)")
  by_epoch = grain.MapDataset.source(host_files).shuffle(seed=seed).repeat(None)
  return grain.experimental.InterleaveIterDataset(
      by_epoch.map(functools.partial(file_documents, source)),
      cycle_length=min(cycle_length, len(host_files)))


def ordered_documents(source: Source) -> grain.IterDataset:
  """Every document of the source once, file after file in sorted order (evaluation)."""
  files = grain.MapDataset.source(source_files(source))
  return grain.experimental.InterleaveIterDataset(
      files.map(functools.partial(file_documents, source)), cycle_length=1)
