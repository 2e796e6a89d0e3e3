"""Small Parquet and JSON-lines shards, written the way FineWeb and SlimPajama ship theirs."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(path, texts, column="text", row_group_size=4):
  """A Parquet file with a string `column` and, like FineWeb's, other columns beside it."""
  table = pa.table({"id": pa.array([f"doc-{i}" for i in range(len(texts))], pa.string()),
                    column: pa.array(texts, pa.string()),
                    "token_count": pa.array([len(t.split()) for t in texts], pa.int64())})
  pq.write_table(table, str(path), row_group_size=row_group_size)
  return path


def write_jsonl(path, texts, field="text"):
  """A .jsonl, .jsonl.gz or .jsonl.zst file (by its suffix) of {field: text, meta: ...} lines,
  with a blank line in the middle."""
  lines = [json.dumps({field: t, "meta": {"redpajama_set_name": "RedPajamaC4"}}) for t in texts]
  data = ("\n".join(lines[:1] + [""] + lines[1:]) + "\n").encode("utf-8")
  path = str(path)
  if path.endswith(".gz"):
    data = gzip.compress(data)
  if path.endswith(".zst"):
    with pa.output_stream(path, compression="zstd") as out:
      out.write(data)
    return path
  with open(path, "wb") as f:
    f.write(data)
  return path


def documents(prefix, n):
  """n texts of varied length (1 to 40 words), distinguishable by `prefix`."""
  return [" ".join(f"{prefix} {i} word{j % 9}" for j in range(1 + (i * 7) % 40)) for i in range(n)]
