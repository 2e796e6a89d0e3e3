"""Tokenizers: the embedded Shakespeare model, sentencepiece `.model` files, HF `tokenizer.json`.

Every tokenizer in a3_jax offers the same small interface:
  encode(text) -> list[int]   no BOS/EOS added
  decode(ids) -> str          special tokens dropped
  bos_id, eos_id, pad_id      int; -1 when the tokenizer has none (sentencepiece's convention)
  vocab_size                  int (may be smaller than the model's embedding table)
  id_to_text(id) -> str       the text of one token, special tokens included
  chat_template               str | None: the Jinja chat template (a3_jax/chat_template.py)

`Tokenizer` (sentencepiece) is the reference implementation; `JsonTokenizer` is
the same interface over a `tokenizers` tokenizer.json. The embedded model
(data/assets/shakespeare.model, built by scripts/train_tokenizer.py) is a
lossless unigram model with ids pad=0, unk=1, bos=2, eos=3.

A `tokenizer.json` (used by LLaMA 3 and SmolLM2) does not say which tokens are
BOS/EOS/pad; as in Hugging Face directories, that lives beside it in
`tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`), which
`JsonTokenizer.save` writes and `JsonTokenizer.from_file` reads; the chat
template lives there too (`chat_template`, or a `chat_template.jinja` file beside it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any, Mapping

import numpy as np
import sentencepiece as spm
import tokenizers
from etils import epath

from a3_jax.atomic_file import read_json_object, write_atomic
from a3_jax.data.corpus import asset_path
from a3_jax.errors import UserError

EMBEDDED = "embedded"
SIDECAR = "tokenizer_config.json"
_ROLES = ("bos", "eos", "pad")


def read_chat_template(directory: str) -> str | None:
  """The chat template an HF tokenizer directory names: chat_template.jinja, else the
  `chat_template` of tokenizer_config.json (a string, or a list of named templates:
  'default')."""
  jinja_path = os.path.join(directory, "chat_template.jinja")
  if os.path.isfile(jinja_path):
    with open(jinja_path, encoding="utf-8") as f:
      return f.read()
  sidecar = os.path.join(directory, SIDECAR)
  if not os.path.isfile(sidecar):
    return None
  with open(sidecar, encoding="utf-8") as f:
    template = json.load(f).get("chat_template")
  if isinstance(template, list):
    template = {t.get("name"): t.get("template") for t in template
                if isinstance(t, dict)}.get("default")
  return template if isinstance(template, str) else None


def _token_text(value) -> str | None:
  """HF writes special tokens as strings or as AddedToken dicts."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


class JsonTokenizer:
  """A `tokenizers.Tokenizer` with its special token ids.

  `path` is the tokenizer.json it was read from, or None for one built in memory
  (from a GGUF file): `save_tokenizer` writes either kind to a directory.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, bos_id: int | None = None,
               eos_id: int | None = None, pad_id: int | None = None, path: str | None = None,
               chat_template: str | None = None):
    self.tokenizer = tokenizer
    self.path = path
    self.chat_template = chat_template
    self.bos_id, self.eos_id, self.pad_id = (-1 if i is None else int(i)
                                             for i in (bos_id, eos_id, pad_id))

  @classmethod
  def from_file(cls, path: str, fallback_ids: Mapping[str, int | None] | None = None):
    """Reads tokenizer.json and the special tokens named in a sibling tokenizer_config.json.

    `fallback_ids` ({'bos': id, ...}) fills roles the sidecar does not name.
    """
    try:
      tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the library raises a bare Exception on bad JSON
      raise UserError(f"{path} is not a valid tokenizer.json: {e}") from None
    ids = dict(fallback_ids or {})
    sidecar = os.path.join(os.path.dirname(path), SIDECAR)
    if os.path.isfile(sidecar):
      special = read_json_object(sidecar)
      for role in _ROLES:
        text = _token_text(special.get(f"{role}_token"))
        if text is not None and tok.token_to_id(text) is not None:
          ids[role] = tok.token_to_id(text)
    return cls(tok, ids.get("bos"), ids.get("eos"), ids.get("pad"), path,
               read_chat_template(os.path.dirname(path)))

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_text(self, i: int) -> str:
    return self.tokenizer.id_to_token(int(i))

  def __repr__(self) -> str:
    return f"JsonTokenizer({self.path!r}, vocab_size={self.vocab_size})"

  def save(self, directory: str) -> str:
    """Writes tokenizer.json and tokenizer_config.json into directory; returns the first."""
    path = os.path.join(directory, "tokenizer.json")
    write_atomic(path, self.tokenizer.to_str(pretty=True))
    special = {f"{role}_token": self.tokenizer.id_to_token(getattr(self, f"{role}_id"))
               for role in _ROLES if getattr(self, f"{role}_id") >= 0}
    if self.chat_template:
      special["chat_template"] = self.chat_template
    write_atomic(os.path.join(directory, SIDECAR), json.dumps(special, indent=2))
    return path


def save_tokenizer(tokenizer, directory: str) -> str:
  """Writes `tokenizer` into directory; returns the file to hand to save_export / export_hf.

  A JsonTokenizer becomes tokenizer.json + tokenizer_config.json (its special
  ids); a sentencepiece Tokenizer's .model file is copied to tokenizer.model.
  """
  if isinstance(tokenizer, JsonTokenizer):
    return tokenizer.save(directory)
  target = os.path.join(directory, "tokenizer.model")
  if os.path.abspath(tokenizer.path) != os.path.abspath(target):
    write_atomic(target, epath.Path(tokenizer.path).read_bytes())  # gs:// too
  return target



class Tokenizer:
  """A sentencepiece model: text <-> token ids.

  `eos_id` ends every document. Packed rows pad with token 0 whatever
  `pad_id` is (-1 for a model without one): segment id 0 marks padding.
  """

  def __init__(self, path: str, chat_template: str | None = None):
    self.path = path
    self.chat_template = chat_template
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

  def id_to_text(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def __repr__(self) -> str:
    return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def fingerprint(tokenizer) -> str:
  """sha256 of what a tokenizer maps (its pieces and special ids), not of where it lives:
  a copy elsewhere has the same fingerprint, another tokenizer of the same size does not."""
  h = hashlib.sha256()
  sp = getattr(tokenizer, "_sp", None)
  h.update(sp.serialized_model_proto() if sp is not None
           else tokenizer.tokenizer.to_str().encode("utf-8"))
  h.update(f"{tokenizer.bos_id},{tokenizer.eos_id},{tokenizer.pad_id}".encode())
  return h.hexdigest()


def check_fits(tokenizer, vocab_size: int, model: str) -> None:
  """A tokenizer whose ids the model has no embedding for is refused (its logits for
  them do not exist: NaN likelihoods, out-of-range embedding lookups)."""
  if tokenizer is not None and tokenizer.vocab_size > vocab_size:
    where = getattr(tokenizer, "path", None) or "(built from a GGUF file)"
    raise UserError(f"tokenizer {where} has {tokenizer.vocab_size} ids but {model} has a "
                    f"vocabulary of {vocab_size}; use the tokenizer it was trained with")


def _first_id(value) -> int | None:
  if isinstance(value, list):
    return value[0] if value else None
  return value


def load_tokenizer(spec: str | None = None,
                   fallback_ids: Mapping[str, int | None] | None = None):
  """The tokenizer named by `spec`: None or "embedded" (the shipped model), a
  sentencepiece `.model` path, or a HF `tokenizer.json` path (`fallback_ids`
  fills special roles its sidecar does not name)."""
  if spec in (None, EMBEDDED):
    return Tokenizer(str(asset_path("shakespeare.model")))
  if spec.endswith(".json"):
    return JsonTokenizer.from_file(spec, fallback_ids)
  if not os.path.isfile(spec):
    raise UserError(f"tokenizer {spec!r}: no such sentencepiece .model file "
                    f"(use {EMBEDDED!r} for the embedded Shakespeare tokenizer)")
  try:
    return Tokenizer(spec)
  except RuntimeError as e:  # sentencepiece's "could not parse ModelProto".
    raise UserError(f"tokenizer {spec!r}: not a sentencepiece model ({e})") from None


def load_hf_tokenizer(directory: str, hf_config: Mapping[str, Any]):
  """The tokenizer of an HF checkpoint directory: tokenizer.model if present, else tokenizer.json.

  Special ids missing from tokenizer_config.json come from config.json.
  """
  for name in ("tokenizer.model", "tokenizer.json"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      fallback = {role: _first_id(hf_config.get(f"{role}_token_id")) for role in _ROLES}
      tokenizer = load_tokenizer(path, fallback)
      tokenizer.chat_template = read_chat_template(directory)
      return tokenizer
  raise UserError(f"no tokenizer.model or tokenizer.json in {directory}: "
                   "the tokenizer must come with the checkpoint")


def token_char_lengths(tokenizer, size: int) -> np.ndarray:
  """Characters each id [size] spells, so that NLL per token becomes NLL per character.

  A sentencepiece byte piece counts one character for a UTF-8 lead or single byte and
  none for a continuation byte; special and out-of-vocabulary ids count none. The
  space sentencepiece prefixes to each encoded text counts too (+1 a document).
  """
  lengths = np.zeros((size,), np.int64)
  sp = getattr(tokenizer, "_sp", None)
  for i in range(min(size, tokenizer.vocab_size)):
    if sp is not None:
      if sp.is_control(i) or sp.is_unknown(i):
        continue
      if sp.is_byte(i):
        lengths[i] = int(int(sp.id_to_piece(i)[3:5], 16) & 0xC0 != 0x80)
        continue
      lengths[i] = len(sp.id_to_piece(i).replace("\u2581", " "))
    else:
      lengths[i] = len(tokenizer.decode([i]).replace("\ufffd", ""))
  return lengths
