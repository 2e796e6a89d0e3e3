"""Streamed sources (parquet:, jsonl:), mixtures and their exact resume, the spec grammar."""

import json

import grain
import numpy as np
import pytest

from a3_jax.data import spec as data_spec
from a3_jax.data import streams
from a3_jax.data.pipeline import make_eval_batches, make_train_iterator
from a3_jax.errors import UserError
from a3_jax.tokenizer import load_tokenizer
from shard_files import documents, write_jsonl, write_parquet

SEQ_LEN = 32


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer(None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """Three Parquet shards of 'web' documents and two .jsonl.zst shards of 'pajama' ones."""
  directory = tmp_path_factory.mktemp("shards")
  web = documents("web", 60)
  pajama = documents("pajama", 50)
  for i in range(3):
    write_parquet(directory / f"web-{i:02d}.parquet", web[i::3])
  for i in range(2):
    write_jsonl(directory / f"pajama-{i:02d}.jsonl.zst", pajama[i::2])
  return directory, web, pajama


def _texts(source_spec, limit=1000):
  (source, _), = data_spec.parse(source_spec)
  return [t for _, t in zip(range(limit), streams.ordered_documents(source))]


def test_parquet_and_jsonl_sources_read_every_document_of_every_file(shards, tmp_path):
  directory, web, pajama = shards
  assert _texts(f"parquet:{directory}/*.parquet") == web[0::3] + web[1::3] + web[2::3]
  assert _texts(f"jsonl:{directory}/*.jsonl.zst") == pajama[0::2] + pajama[1::2]
  for suffix in ("jsonl", "jsonl.gz"):
    write_jsonl(tmp_path / f"a.{suffix}", ["x", "y é"], field="content")
    assert _texts(f"jsonl:{tmp_path}/a.{suffix}#content") == ["x", "y é"]
  write_parquet(tmp_path / "b.parquet", ["p", "q"], column="body")
  write_parquet(tmp_path / "c.parquet", [], column="body")  # no rows
  assert _texts(f"parquet:{tmp_path}/[bc].parquet#body") == ["p", "q"]


@pytest.mark.parametrize("make_spec, message", [
    (lambda d: f"parquet:{d}/none/*.parquet", "no files match"),
    (lambda d: f"jsonl:{d}/*", "is not one of"),  # a .parquet file among them
    (lambda d: f"parquet:{d}/fake.parquet", "fake.parquet is not a Parquet file"),
    (lambda d: f"parquet:{d}/web.parquet#content", "web.parquet has no column 'content'"),
    (lambda d: f"parquet:{d}/web.parquet#token_count", "column 'token_count' holds int64"),
    (lambda d: f"jsonl:{d}/fake.jsonl.zst", "fake.jsonl.zst is not a zst-compressed file"),
    (lambda d: f"jsonl:{d}/fake.jsonl.gz", "fake.jsonl.gz is not a gz-compressed file"),
    (lambda d: f"jsonl:{d}/p.jsonl", "p.jsonl, line 1: not JSON"),
    (lambda d: f"jsonl:{d}/ok.jsonl#body", "ok.jsonl, line 1: expected .* string 'body' field"),
])
def test_bad_streamed_sources_are_one_clear_user_error(tmp_path, make_spec, message):
  write_parquet(tmp_path / "web.parquet", ["a"])
  (tmp_path / "fake.parquet").write_text('{"text": "json, not parquet"}\n')
  (tmp_path / "fake.jsonl.zst").write_text('{"text": "not compressed"}\n')
  (tmp_path / "fake.jsonl.gz").write_text('{"text": "not compressed"}\n')
  (tmp_path / "p.jsonl").write_bytes((tmp_path / "web.parquet").read_bytes())
  write_jsonl(tmp_path / "ok.jsonl", ["a"])
  with pytest.raises(UserError, match=message):
    _texts(make_spec(tmp_path))


def test_uri_globs_go_through_epath(tmp_path, monkeypatch):
  from etils import epath
  from a3_jax.data import sources
  for name in ("a/x.parquet", "a/y.parquet", "b/z.parquet", "a/notes.txt"):
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text("")
  opened, real_path = [], epath.Path

  def fake_path(uri):  # gs://bucket/... -> tmp_path/...
    opened.append(uri)
    return real_path(str(uri).replace("gs://bucket", str(tmp_path)))
  monkeypatch.setattr(sources.epath, "Path", fake_path)
  assert [p.rpartition("/")[2] for p in sources.glob_files("s", "gs://bucket/*/*.parquet")] == [
      "x.parquet", "y.parquet", "z.parquet"]
  assert opened[-1] == "gs://bucket"  # the fixed part; epath globs the rest
  assert len(sources.glob_files("s", "gs://bucket/a/x.parquet")) == 1
  with pytest.raises(UserError, match="no files match"):
    sources.glob_files("s", "gs://bucket/c/*.parquet")
  with pytest.raises(UserError, match="text: reads local files"):
    sources.make_source("text:gs://bucket/*.txt")


@pytest.mark.parametrize("text, message", [
    ("parquet:", "unknown data source"),
    ("hf:fineweb", "unknown data source 'hf:fineweb'"),
    ("parquet:/d/*.parquet#", "GLOB#COLUMN"),
    ("mix:", "names no source"),
    ("mix:parquet:/a/*.parquet", "not SOURCE=WEIGHT"),
    ("mix:parquet:/a/*.parquet=0,jsonl:/b/*.jsonl=1", "weight > 0"),
    ("mix:parquet:/a/*.parquet=x", "weight > 0"),
    ("mix:shakespeare=1,shakespeare=2", "names a source twice"),
    ("mix:mix:shakespeare=1=1", "cannot hold another mixture"),
])
def test_spec_grammar_errors(text, message):
  with pytest.raises(UserError, match=message):
    data_spec.parse(text)


def test_spec_grammar_normalises_weights_and_reads_columns():
  mixture = data_spec.parse("mix:parquet:gs://b/web/*.parquet#body=3, jsonl:/p/*.jsonl.zst=1")
  (web, w_web), (pajama, w_pajama) = mixture
  assert (web.scheme, web.target, web.column, w_web) == ("parquet", "gs://b/web/*.parquet",
                                                          "body", 0.75)
  assert (pajama.scheme, pajama.column, w_pajama) == ("jsonl", "text", 0.25)
  assert data_spec.parse("shakespeare") == ((data_spec.Source("shakespeare", "shakespeare", ""),
                                             1.0),)


def _mix(directory, web_weight=0.7):
  return (f"mix:parquet:{directory}/*.parquet={web_weight},"
          f"jsonl:{directory}/*.jsonl.zst={1 - web_weight:.1f}")


def _train(source_spec, tokenizer, **overrides):
  kwargs = dict(seq_len=SEQ_LEN, batch_size=4, seed=0, shard_index=0, shard_count=1,
                shuffle_window=8) | overrides
  return make_train_iterator(source_spec, tokenizer, **kwargs)


def test_a_mixture_of_two_formats_resumes_bit_exactly_through_orbax(shards, tokenizer, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  directory, _, _ = shards
  iterator = _train(_mix(directory), tokenizer)
  for _ in range(23):  # past the end of every file: several epochs of each source
    next(iterator)
  manager = ocp.CheckpointManager(tmp_path, item_names=("data",))
  manager.save(23, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = [next(iterator) for _ in range(30)]
  restored = _train(_mix(directory), tokenizer)
  manager.restore(23, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  for want, got in zip(expected, (next(restored) for _ in range(30))):
    assert want.keys() == got.keys() == {"tokens", "segment_ids", "positions"}
    for name in want:
      np.testing.assert_array_equal(want[name], got[name])
  assert restored.realised_shares() == iterator.realised_shares()
  with pytest.raises(UserError, match="resume with the same --data"):
    other = _train(_mix(directory, 0.5), tokenizer)
    other.set_state(json.loads(json.dumps(iterator.get_state())))


def test_realised_token_shares_follow_the_weights(shards, tokenizer):
  directory, _, _ = shards
  iterator = _train(_mix(directory, 0.6), tokenizer)
  batches = [next(iterator) for _ in range(50)]
  tokens = sum(int(np.count_nonzero(b["segment_ids"])) for b in batches)
  shares = iterator.realised_shares()
  web, pajama = shares.values()
  assert web["tokens"] + pajama["tokens"] == tokens
  assert abs(web["share"] - 0.6) < 0.02 and abs(pajama["share"] - 0.4) < 0.02
  # the rows really come from the source they are counted for
  decoded = [tokenizer.decode([int(t) for t in row if t]) for b in batches for row in b["tokens"]]
  web_rows = sum("web" in text and "pajama" not in text for text in decoded)
  assert abs(web_rows / len(decoded) - 0.6) < 0.05


def test_hosts_read_disjoint_files_and_too_few_files_is_an_error(shards, tokenizer):
  directory, _, _ = shards
  spec = f"parquet:{directory}/*.parquet"
  (source, _), = data_spec.parse(spec)
  seen = []
  for host in range(3):
    docs = streams.train_documents(source, seed=0, host=host, hosts=3)
    seen.append({t.split()[1] for _, t in zip(range(20), docs)})  # doc numbers of one file
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  with pytest.raises(UserError, match="has 3 files, too few for 4 hosts"):
    _train(spec, tokenizer, shard_index=3, shard_count=4)


def test_eval_batches_of_a_mixture_are_deterministic_and_hold_both_sources(shards, tokenizer):
  directory, _, _ = shards
  first, second = (make_eval_batches(_mix(directory), tokenizer, seq_len=SEQ_LEN, batch_size=4,
                                     shard_index=0, shard_count=1) for _ in range(2))
  assert len(first) == len(second) > 2 and first[0].keys() == {"tokens", "segment_ids",
                                                               "positions"}
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  text = " ".join(tokenizer.decode([int(t) for t in row if t]) for b in first for row in b["tokens"])
  assert "web" in text and "pajama" in text
