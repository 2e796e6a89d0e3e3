"""Sentencepiece tokenizers: the embedded Shakespeare model or any `.model` file.

The embedded model (assets/shakespeare.model, built by scripts/train_tokenizer.py)
is a lossless unigram model of 8192 pieces with ids pad=0, unk=1, bos=2, eos=3.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import sentencepiece as spm

from a3_jax.data.corpus import asset_path

EMBEDDED = "embedded"


class Tokenizer:
  """A sentencepiece model: text <-> token ids.

  `eos_id` ends every document. Packed rows pad with token 0 whatever
  `pad_id` is (-1 for a model without one): segment id 0 marks padding.
  """

  def __init__(self, path: str):
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size: int = self._sp.get_piece_size()
    self.pad_id: int = self._sp.pad_id()
    self.bos_id: int = self._sp.bos_id()
    self.eos_id: int = self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of token ids [n] (a list or an integer array)."""
    return self._sp.decode([int(i) for i in ids])

  def __repr__(self) -> str:
    return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(spec: str | None = None) -> Tokenizer:
  """The tokenizer named by `spec`: None or "embedded" (the shipped model), a
  sentencepiece `.model` path, or a HF `tokenizer.json` path."""
  if spec in (None, EMBEDDED):
    return Tokenizer(str(asset_path("shakespeare.model")))
  if spec.endswith(".json") and os.path.isfile(spec):  # a HF tokenizer.json (+ its config)
    from a3_jax.convert.tokenizer import JsonTokenizer
    return JsonTokenizer.from_file(spec)
  if not os.path.isfile(spec):
    raise ValueError(f"tokenizer {spec!r}: no such sentencepiece .model file "
                     f"(use {EMBEDDED!r} for the embedded Shakespeare tokenizer)")
  try:
    return Tokenizer(spec)
  except RuntimeError as e:  # sentencepiece's "could not parse ModelProto".
    raise ValueError(f"tokenizer {spec!r}: not a sentencepiece model ({e})") from None
