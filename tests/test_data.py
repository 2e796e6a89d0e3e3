"""Data layer: embedded corpus, tokenizer, document sources, packing and batching."""

import json
import random
import sys

import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from array_record.python.array_record_module import ArrayRecordWriter

from a3_jax.data.corpus import VALIDATION_WORKS, load_works
from a3_jax.data.pipeline import make_eval_batches, make_train_iterator
from a3_jax.data.sources import make_source
from a3_jax.tokenizer import load_tokenizer
from a3_jax.sharding import batch_sharding, make_mesh, shard_batch

SEQ_LEN = 32
TINY_TFDS_DOCS = {"train": ["alpha beta", "gamma\n\ndelta", "é 漢 {x}"],
                  "validation": ["only one"]}


class A3TinyText(tfds.core.GeneratorBasedBuilder):
  """A tfds dataset of a few texts, written offline in array_record format."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    # disable_shuffling keeps records in the order written (else hash order).
    features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(docs) for split, docs in TINY_TFDS_DOCS.items()}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      yield i, {"text": doc}


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer(None)


@pytest.fixture(scope="module")
def documents():
  """40 texts of 1 to ~400 words: many shorter and several longer than a row."""
  rng = random.Random(0)
  words = load_works("validation")[0][1].split()[:3000]
  return [" ".join(rng.choices(words, k=rng.choice([1, 5, 20, 60, 400])))
          + rng.choice(["", "\n"]) for _ in range(40)]


@pytest.fixture(scope="module")
def text_spec(documents, tmp_path_factory):
  """`text:` spec of a .txt file per document; sorted names keep the documents' order."""
  directory = tmp_path_factory.mktemp("docs")
  for i, doc in enumerate(documents):
    (directory / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
  return f"text:{directory}/*.txt"


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  A3TinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def _ids(tokenizer, doc):
  return tokenizer.encode(doc) + [tokenizer.eos_id]


def _train(spec, tokenizer, **overrides):
  """A small single-host training iterator."""
  kwargs = dict(seq_len=SEQ_LEN, batch_size=2, seed=0, shard_index=0, shard_count=1,
                shuffle_window=8) | overrides
  return make_train_iterator(spec, tokenizer, **kwargs)


def _segments(batch):
  """Checks the packed layout of a batch and returns the token ids [n] of every segment."""
  tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
  assert tokens.shape == seg.shape == pos.shape and tokens.shape[1] == SEQ_LEN
  assert tokens.dtype == seg.dtype == pos.dtype == np.int32
  segments = []
  for tokens_T, seg_T, pos_T in zip(tokens, seg, pos):
    used = int(np.count_nonzero(seg_T))
    # Padding only trails a row.
    assert not seg_T[used:].any() and not tokens_T[used:].any() and not pos_T[used:].any()
    ids_in_row = np.unique(seg_T[:used])
    np.testing.assert_array_equal(ids_in_row, np.arange(1, len(ids_in_row) + 1))
    for segment_id in ids_in_row:
      where = np.flatnonzero(seg_T == segment_id)
      np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))  # Contiguous.
      np.testing.assert_array_equal(pos_T[where], np.arange(len(where)))  # Positions restart.
      segments.append(tokens_T[where])
  return segments


def _is_piece_of(segment, docs_ids):
  """Whether `segment` is a contiguous run of one document's ids."""
  needle = "," + ",".join(map(str, segment)) + ","
  return any(needle in "," + ",".join(map(str, ids)) + "," for ids in docs_ids)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


# Corpus and tokenizer.


def test_corpus_has_42_works_and_a_fixed_disjoint_validation_split():
  names = [name for name, _ in load_works("all")]
  train = {name for name, _ in load_works("train")}
  validation = {name for name, _ in load_works("validation")}
  assert len(names) == len(set(names)) == 42
  assert validation == set(VALIDATION_WORKS) and not train & validation
  assert train | validation == set(names)
  chars = {split: sum(len(t) for _, t in load_works(split)) for split in ("validation", "all")}
  assert 0.05 < chars["validation"] / chars["all"] < 0.08
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    load_works("dev")


def test_embedded_tokenizer_is_lossless_on_the_validation_split(tokenizer):
  ids = (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
  assert ids == (2048, 0, 2, 3)
  for name, text in load_works("validation"):
    assert tokenizer.decode(tokenizer.encode(text)) == text, name
  odd = "  two  spaces\n\n\ttab, digits 12345, \u00e9t\u00e9, \u6f22\u5b57, emoji \U0001F600 \r\n"
  assert tokenizer.decode(tokenizer.encode(odd)) == odd


def test_load_tokenizer_reads_a_model_path_and_rejects_a_missing_one(tokenizer, tmp_path):
  text = "To be, or not to be"
  assert load_tokenizer(tokenizer.path).encode(text) == tokenizer.encode(text)
  assert load_tokenizer("embedded").path == tokenizer.path
  with pytest.raises(ValueError, match="no such sentencepiece .model file"):
    load_tokenizer(str(tmp_path / "missing.model"))
  (tmp_path / "garbage.model").write_text("not a model")
  with pytest.raises(ValueError, match="not a sentencepiece model"):
    load_tokenizer(str(tmp_path / "garbage.model"))


# Sources.


def test_shakespeare_source_splits():
  validation = make_source("shakespeare", split="validation")
  assert len(make_source("shakespeare")) == 39 and len(validation) == 3
  assert validation[0] == load_works("validation")[0][1]


def test_text_source_reads_txt_and_jsonl_files(tmp_path):
  (tmp_path / "a.txt").write_bytes("first\r\ndocument \u00e9\n".encode())
  lines = [json.dumps({"text": "second"}), "", json.dumps({"text": "third\n", "id": 3}), ""]
  (tmp_path / "b.jsonl").write_text("\n".join(lines), encoding="utf-8")
  source = make_source(f"text:{tmp_path}/*")
  assert list(source) == ["first\r\ndocument \u00e9\n", "second", "third\n"]
  (tmp_path / "c.jsonl").write_text('{"title": "no text"}\n')
  with pytest.raises(ValueError, match="c.jsonl.*'text' field"):
    make_source(f"text:{tmp_path}/c.jsonl")[0]


def test_arrayrecord_source_reads_text_and_json_records(tmp_path):
  writer = ArrayRecordWriter(str(tmp_path / "docs.array_record"), "group_size:1")
  for record in ["plain text", json.dumps({"text": "from json"}), "{not json", "\u00e9 \u6f22"]:
    writer.write(record.encode("utf-8"))
  writer.close()
  source = make_source(f"arrayrecord:{tmp_path}/*.array_record")
  assert list(source) == ["plain text", "from json", "{not json", "\u00e9 \u6f22"]


def test_tfds_source_reads_the_text_feature_offline(tfds_dir):
  def texts(spec, split="train"):
    return list(make_source(spec, split=split, data_dir=tfds_dir))
  assert texts("tfds:a3_tiny_text") == TINY_TFDS_DOCS["train"]
  assert texts("tfds:a3_tiny_text", split="validation") == ["only one"]
  assert texts("tfds:a3_tiny_text:train[1:2]") == ["gamma\n\ndelta"]


@pytest.mark.parametrize("spec, message", [
    ("hf:wikitext", "unknown data source 'hf:wikitext'"),
    ("text:", "unknown data source"),
    ("text:/nonexistent/*.txt", "no files match '/nonexistent/\\*.txt'"),
    ("arrayrecord:/nonexistent/*", "no files match"),
    ("tfds:a3_no_such_dataset", "no tfds dataset named 'a3_no_such_dataset'"),
    ("tfds:a3_tiny_text:test", "Unknown split 'test'"),
])
def test_bad_source_specs_raise_one_clear_value_error(spec, message, tfds_dir):
  with pytest.raises(ValueError, match=message):
    make_source(spec, data_dir=tfds_dir)


def test_unprepared_tfds_dataset_and_unsupported_files_raise_value_error(tmp_path):
  with pytest.raises(ValueError, match="'a3_tiny_text' is not prepared"):
    make_source("tfds:a3_tiny_text", data_dir=str(tmp_path))
  (tmp_path / "table.csv").write_text("a,b\n")
  with pytest.raises(ValueError, match="table.csv' is not one of"):
    make_source(f"text:{tmp_path}/*")


# Packing and batching.


def test_eval_batches_pack_all_documents_in_order_without_joining_two(tokenizer, documents,
                                                                       text_spec):
  batches = make_eval_batches(text_spec, tokenizer, seq_len=SEQ_LEN, batch_size=4)
  docs_ids = [_ids(tokenizer, doc) for doc in documents]
  stream = np.concatenate([segment for batch in batches for segment in _segments(batch)])
  # Nothing lost, nothing added, nothing reordered.
  np.testing.assert_array_equal(stream, np.concatenate(docs_ids))
  # Map each packed token to its document; segments must start at a row or a document start.
  doc_of_token = np.repeat(np.arange(len(docs_ids)), [len(ids) for ids in docs_ids])
  doc_starts = set(np.cumsum([0] + [len(ids) for ids in docs_ids]))
  offset = 0
  for batch in batches:
    for seg_T in batch["segment_ids"]:
      used = int(np.count_nonzero(seg_T))
      doc_T = np.full(SEQ_LEN, -1)
      doc_T[:used] = doc_of_token[offset:offset + used]
      starts = offset + np.flatnonzero(np.diff(seg_T[:used], prepend=0))
      assert all(start in doc_starts for start in starts[1:])
      mask_TxT = (seg_T[:, None] == seg_T[None, :]) & (seg_T[None, :] != 0)
      assert not (mask_TxT & (doc_T[:, None] != doc_T[None, :])).any()
      offset += used
  num_rows = -(-len(stream) // SEQ_LEN)  # Rows are full but the last.
  assert len(batches) == -(-num_rows // 4)
  assert all(b["tokens"].shape == (4, SEQ_LEN) for b in batches)
  (padded,) = make_eval_batches(text_spec, tokenizer, seq_len=SEQ_LEN, batch_size=num_rows + 1)
  assert padded["segment_ids"][:num_rows].any(axis=1).all()
  assert not padded["segment_ids"][num_rows:].any()  # The padding row.


def test_eval_batches_split_global_batches_across_hosts(tokenizer, text_spec):
  whole = make_eval_batches(text_spec, tokenizer, seq_len=SEQ_LEN, batch_size=6, max_batches=5)
  halves = [make_eval_batches(text_spec, tokenizer, seq_len=SEQ_LEN, batch_size=3, max_batches=5,
                              shard_index=i, shard_count=2) for i in range(2)]
  assert len(whole) == len(halves[0]) == len(halves[1]) == 5
  joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)]
  _assert_same_batches(whole, joined)


def test_train_rows_are_pieces_of_documents(tokenizer, documents, text_spec):
  iterator = _train(text_spec, tokenizer, batch_size=4, shuffle_window=16)
  docs_ids = [_ids(tokenizer, doc) for doc in documents]
  batches = _take(iterator, 30)  # ~2 epochs of the 40 documents.
  for batch in batches:
    assert all(_is_piece_of(segment, docs_ids) for segment in _segments(batch))
  assert all(b["segment_ids"].all() for b in batches)  # An endless stream needs no padding.


def test_hosts_read_disjoint_documents(tokenizer, documents, text_spec):
  rows = []
  for index in range(2):
    iterator = _train(text_spec, tokenizer, batch_size=4, shard_index=index, shard_count=2)
    host_ids = [_ids(tokenizer, doc) for doc in documents[index::2]]
    batches = _take(iterator, 8)
    long_segments = [s for b in batches for s in _segments(b) if len(s) > 8]  # Unique enough.
    assert long_segments and all(_is_piece_of(s, host_ids) for s in long_segments)
    rows.append({row.tobytes() for b in batches for row in b["tokens"]})
  assert not rows[0] & rows[1]


def test_train_iterator_restores_the_next_batches_exactly_from_json_state(tokenizer):
  iterator, restored = (_train("shakespeare", tokenizer, seed=3) for _ in range(2))
  for _ in range(24):  # Crosses window and document ends, where grain's own JSON restore fails.
    state = json.loads(json.dumps(iterator.get_state()))  # What orbax writes and reads back.
    expected = _take(iterator, 2)
    restored.set_state(state)
    _assert_same_batches(expected, _take(restored, 2))


def test_orbax_saves_and_restores_the_train_iterator(tokenizer, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")

  iterator = _train("shakespeare", tokenizer, seed=5)
  _take(iterator, 7)
  manager = ocp.CheckpointManager(tmp_path, item_names=("data",))
  manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = _take(iterator, 3)
  restored = _train("shakespeare", tokenizer, seed=5)
  manager.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same_batches(expected, _take(restored, 3))


def test_train_iterator_is_seeded(tokenizer, text_spec):
  def first_batches(seed):
    return _take(_train(text_spec, tokenizer, batch_size=4, seed=seed, shuffle_window=256), 3)
  _assert_same_batches(first_batches(1), first_batches(1))
  assert not np.array_equal(first_batches(1)[0]["tokens"], first_batches(2)[0]["tokens"])


def test_pipeline_argument_errors(tokenizer, tfds_dir):
  with pytest.raises(ValueError, match="has 3 documents, too few for 4 hosts"):
    _train("tfds:a3_tiny_text", tokenizer, data_dir=tfds_dir, shard_index=3, shard_count=4)
  with pytest.raises(ValueError, match="shard_index=2 is not in"):
    make_eval_batches("shakespeare", tokenizer, seq_len=SEQ_LEN, batch_size=2, shard_index=2,
                      shard_count=2)


def test_shard_batch_places_host_rows_on_the_mesh(tokenizer):
  mesh = make_mesh("data:-1")
  sharding = batch_sharding(mesh)
  (batch,) = make_eval_batches("shakespeare", tokenizer, seq_len=SEQ_LEN,
                               batch_size=jax.device_count(), max_batches=1)
  global_batch = shard_batch(batch, mesh)
  for name, array in batch.items():
    assert global_batch[name].sharding == sharding and global_batch[name].shape == array.shape
    np.testing.assert_array_equal(np.asarray(global_batch[name]), array)


def test_worker_processes_give_the_same_stream(tokenizer):
  flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags.

  def first_batches(worker_count):
    return _take(_train("shakespeare", tokenizer, worker_count=worker_count), 4)
  _assert_same_batches(first_batches(0), first_batches(1))


def test_token_char_lengths_spell_the_text(tokenizer):
  from a3_jax.tokenizer import token_char_lengths
  lengths = token_char_lengths(tokenizer, tokenizer.vocab_size + 3)
  assert lengths[tokenizer.eos_id] == 0 and lengths[-3:].sum() == 0
  # sentencepiece's dummy prefix adds one space to every encoded text.
  for text in ("To be, or not to be", "  two  spaces\n\n\ttab, 12345, \u00e9t\u00e9, \u6f22\u5b57"):
    ids = tokenizer.encode(text)
    assert lengths[ids].sum() == len(text) + 1, text
