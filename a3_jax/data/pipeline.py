"""Token pipelines with grain: documents -> ids + EOS -> packed rows -> batches.

A batch is a dict of int32 numpy arrays, each [B, T] (B: per-host batch size,
T: seq_len):

    tokens       token ids; 0 in padding
    segment_ids  1, 2, ... for the documents (or pieces of one) in a row; 0 marks
                 padding, which only ever trails a row
    positions    position within the segment, restarting at 0 for every segment
    roles        fine-tuning data only (`sft:GLOB`, a3_jax/data/sft.py): prompt,
                 response or padding (a3_jax/roles.py); its rows hold whole examples

Rows are filled by grain's ConcatThenSplit packer: documents follow each other
and the one that does not fit is cut, its rest starting the next row. A piece
of a cut document is a segment of its own whose positions restart at 0 (RoPE
sees only relative positions and no attention crosses a row, so continuing the
document's count would gain nothing). The mask `seg[i] == seg[j] & seg[j] != 0` never joins two
documents.

Training batches are an endless, shuffled, per-host stream whose iterator grain
and orbax can checkpoint; evaluation batches are one deterministic pass with
the last batch padded, so every batch has the same shape. A tokenizer is any
object with `encode(text) -> list[int]` and an `eos_id`.

A mixture (`mix:SRC=W,...`, data.spec) packs each source into rows of its own
and interleaves the rows by weight (grain's `IterDataset.mix`, deterministic),
so the weights are shares of tokens; the iterator counts the tokens each source
gave (`MixtureIterator.realised_shares`) and keeps the count in its state.
"""

from __future__ import annotations

import functools
import itertools

import grain
import jax
import numpy as np

from a3_jax.data import sft, streams
from a3_jax.data.json_state import JsonStateIterator
from a3_jax.data.mixture import SOURCE_FEATURE, MixtureIterator, tagged
from a3_jax.data.sources import make_source
from a3_jax.data.spec import Source, parse
from a3_jax.tokenizer import Tokenizer
from a3_jax.errors import UserError

Batch = dict[str, np.ndarray]

# Tokenizing holds the GIL, so grain's default of 16 threads only contends (and
# prefetches 500 documents); two threads overlap reading with tokenizing.
# `worker_count` is what scales tokenization.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=32)


# 64 entries hold the whole embedded corpus (42 works): later epochs re-tokenize nothing.
@functools.lru_cache(maxsize=64)
def _encode_with_eos(tokenizer: Tokenizer, text: str) -> np.ndarray:
  """Token ids [len + 1] of `text` followed by EOS; read-only, as the array is shared."""
  ids = np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], np.int32)
  ids.flags.writeable = False
  return ids


def _encode_document(tokenizer: Tokenizer, text: str) -> dict[str, np.ndarray]:
  return {"tokens": _encode_with_eos(tokenizer, text)}


def _tokenized(documents: grain.MapDataset | grain.IterDataset, tokenizer: Tokenizer):
  if tokenizer.eos_id < 0:
    where = getattr(tokenizer, "path", None) or "(built from a GGUF file)"
    raise UserError(f"tokenizer {where} has no EOS token, which ends every document "
                    "(a tokenizer.json names it as eos_token in tokenizer_config.json beside it)")
  return documents.map(functools.partial(_encode_document, tokenizer))


def check_first_documents(source, tokenizer: Tokenizer) -> None:
  """Reads and tokenizes the first document of every file of a random-access `source`
  (one of other sources), so that a wrong format is refused before a run writes
  anything; a bad record later on surfaces when the pipeline reaches it, naming its
  file and line."""
  first = getattr(source, "first_documents", lambda: [0] if len(source) else [])
  for index in first():
    _encode_with_eos(tokenizer, source[index])


def _packed_rows(ids: grain.MapDataset | grain.IterDataset, seq_len: int) -> grain.IterDataset:
  """Rows {tokens, tokens_segment_ids, tokens_positions}, each [T]."""
  if isinstance(ids, grain.MapDataset):
    ids = ids.to_iter_dataset(_READ_OPTIONS)
  return grain.experimental.ConcatThenSplitIterDataset(ids, length_struct={"tokens": seq_len})


def _mixed_rows(rows: list[grain.IterDataset], weights: list[float]) -> grain.IterDataset:
  """The rows of one source, or of several interleaved by weight, each tagged with its source."""
  if len(rows) == 1:
    return rows[0]
  return grain.IterDataset.mix([r.map(functools.partial(tagged, i)) for i, r in enumerate(rows)],
                               weights)


def _rows(source: Source, documents, tokenizer: Tokenizer, seq_len: int, overlong: str,
          bins: int, seed: int) -> grain.IterDataset:
  """Packed rows of one source's documents (concatenated, then split) or of its
  fine-tuning examples (`sft:`; whole, first fit into `bins` rows at a time)."""
  if source.scheme == "sft":
    return sft.packed_examples(documents, tokenizer, seq_len=seq_len, overlong=overlong,
                               bins=bins, read_options=_READ_OPTIONS, seed=seed)
  return _packed_rows(_tokenized(documents, tokenizer), seq_len)


def _batch_features(rows: Batch) -> Batch:
  features = {"tokens": rows["tokens"], "segment_ids": rows["tokens_segment_ids"],
              "positions": rows["tokens_positions"]}
  if "roles" in rows:  # fine-tuning rows (data/sft.py)
    features["roles"] = rows["roles"]
  if SOURCE_FEATURE in rows:  # a mixture's; MixtureIterator counts and drops it
    features[SOURCE_FEATURE] = rows[SOURCE_FEATURE]
  return features


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """(index, count) of this host; None means jax.process_index() / jax.process_count()."""
  index = jax.process_index() if shard_index is None else shard_index
  count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= index < count:
    raise UserError(f"shard_index={index} is not in [0, shard_count={count})")
  return index, count


def make_train_iterator(source_spec: str, tokenizer: Tokenizer, *, seq_len: int, batch_size: int,
                        seed: int, split: str = "train", data_dir: str | None = None,
                        shard_index: int | None = None, shard_count: int | None = None,
                        shuffle_window: int = 256, worker_count: int = 0,
                        overlong: str = "refuse") -> grain.DatasetIterator:
  """An endless iterator of training batches, each [batch_size, seq_len] per feature.

  Hosts read disjoint documents (`documents[shard_index::shard_count]`), each
  epoch in a new order drawn from `seed`. Packed rows are then shuffled within
  windows of `shuffle_window` rows, so that one batch does not hold consecutive
  pieces of one long document. `get_state()`/`set_state()` reproduce the
  stream exactly, also through JSON, so orbax can save the iterator with
  `grain.checkpoint.CheckpointSave(iterator)` and restore it with
  `grain.checkpoint.CheckpointRestore(iterator)`. `worker_count > 0` tokenizes
  in that many processes (absl's global flags must be parsed first, as
  `a3_jax.cli.common.parse` does). `overlong`: what an `sft:` example longer
  than a row does (a3_jax/data/sft.py).
  """
  index, count = _shard(shard_index, shard_count)
  mixture = _parsed(source_spec)
  # Source i draws its orders from seed + i: a single source's stream is the same
  # as before mixtures existed.
  rows = [_rows(source, _train_documents(source, seed + i, index, count, split, data_dir,
                                         tokenizer),
                tokenizer, seq_len, overlong, bins=batch_size, seed=seed)
          for i, (source, _) in enumerate(mixture)]
  rows = grain.experimental.WindowShuffleIterDataset(
      _mixed_rows(rows, [w for _, w in mixture]), window_size=shuffle_window, seed=seed)
  batches = rows.batch(batch_size, drop_remainder=True).map(_batch_features)
  if worker_count:
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  if len(mixture) == 1:
    return JsonStateIterator(iter(batches))
  return MixtureIterator(iter(batches), mixture)


def _train_documents(source: Source, seed: int, index: int, count: int, split: str,
                     data_dir: str | None, tokenizer: Tokenizer
                     ) -> grain.MapDataset | grain.IterDataset:
  """Host `index`'s endless documents of one source, each epoch in a new order (the
  first document of each of its files read and tokenized here, before any write)."""
  if source.streamed:
    return streams.train_documents(source, seed, index, count)
  documents = _random_access(source, split, data_dir)
  if source.scheme == "sft":
    sft.check_first_example(documents, tokenizer)
  else:
    check_first_documents(documents, tokenizer)
  documents = grain.MapDataset.source(documents)
  host_documents = documents[index::count]
  if not len(host_documents):
    raise UserError(f"source {source.spec!r} has {len(documents)} documents, too few for "
                     f"{count} hosts to get at least one each")
  return host_documents.shuffle(seed=seed).repeat(None)


def _parsed(source_spec: str):
  """The spec's (source, weight) pairs; fine-tuning examples (`sft:`) come alone."""
  mixture = parse(source_spec)
  if len(mixture) > 1 and any(source.scheme == "sft" for source, _ in mixture):
    raise UserError(f"data spec {source_spec!r}: sft: examples cannot be mixed with other "
                    "sources (their rows carry roles); put the files in one sft:GLOB")
  return mixture


def _ordered_documents(source: Source, split: str, data_dir: str | None):
  """Every document (or fine-tuning example) of one source once, in order."""
  if source.streamed:
    return streams.ordered_documents(source)
  return grain.MapDataset.source(_random_access(source, split, data_dir))


def _random_access(source: Source, split: str, data_dir: str | None):
  """The documents (sources.make_source) or fine-tuning examples (`sft:`) of a source."""
  if source.scheme == "sft":
    return sft.example_source(source.spec)
  return make_source(source.spec, split=split, data_dir=data_dir)


def make_eval_batches(source_spec: str, tokenizer: Tokenizer, *, seq_len: int, batch_size: int,
                      split: str = "validation", data_dir: str | None = None,
                      max_batches: int | None = None, shard_index: int | None = None,
                      shard_count: int | None = None, overlong: str = "refuse") -> list[Batch]:
  """One pass over the source in order: batches [batch_size, seq_len] per feature.

  Every host packs the whole source into global batches of
  batch_size * shard_count rows and keeps its own slice of rows, so all hosts
  return the same number of batches. The last global batch is padded with
  all-zero rows (segment id 0). A mixture interleaves its sources' rows by weight
  and ends with the first source that does.
  """
  index, count = _shard(shard_index, shard_count)
  global_batch_size = batch_size * count
  mixture = _parsed(source_spec)
  rows = _mixed_rows([_rows(source, _ordered_documents(source, split, data_dir), tokenizer,
                            seq_len, overlong, bins=global_batch_size, seed=0)
                      for source, _ in mixture], [w for _, w in mixture])
  pad_last_batch = functools.partial(grain.experimental.batch_and_pad, batch_size=global_batch_size)
  batches = rows.batch(global_batch_size, batch_fn=pad_last_batch)
  host_rows = slice(index * batch_size, (index + 1) * batch_size)
  return [_batch_features({name: array[host_rows] for name, array in batch.items()
                           if name != SOURCE_FEATURE})
          for batch in itertools.islice(batches, max_batches)]
