"""A GGUF file's tokenizer, rebuilt with the `tokenizers` library (no transformers, no torch).

llama.cpp stores a tokenizer as metadata: `tokenizer.ggml.model` (its kind), `.pre`
(the pre-tokenizer's name), `.tokens`, `.token_type`, `.merges` or `.scores`, and
the special ids. The LLaMA-family kinds are rebuilt here the way transformers'
GGUF loader builds them, and a test checks the two agree token for token:

  gpt2   byte-level BPE (LLaMA 3, SmolLM2): the file's merges, GPT-2's byte
         alphabet, the split regex its `.pre` names (GPT-2's for any other
         name, as in transformers: SmolLM2's `smollm` among them)
  llama  sentencepiece BPE with byte fallback (LLaMA 2): merges from the file,
         or recovered from the vocabulary's scores (sentencepiece merges the
         pair whose result scores highest)

Tokens marked CONTROL, and the special ids' tokens, become special added tokens
(never split, dropped on decode); USER_DEFINED ones become plain added tokens.
"""

from __future__ import annotations

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from a3_jax.errors import UserError

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4  # llama.cpp's token types
_ROLE_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id",
              "unk": "unknown_token_id"}

# llama.cpp's LLaMA 3 pre-tokenizer ("llama-bpe" and its aliases).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {name: _LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe")}


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map (byte-level BPE's spelling)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  spelling, extra = {}, 0
  for b in range(256):
    if b in printable:
      spelling[b] = chr(b)
    else:
      spelling[b] = chr(256 + extra)
      extra += 1
  return spelling


def _byte_level(tokens: list[str], merges: list[str]) -> tokenizers.Tokenizer:
  spelling = _byte_alphabet()
  alphabet = set(spelling.values())
  vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
           for i, t in enumerate(tokens)}
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                                        fuse_unk=False))
  tok.decoder = decoders.ByteLevel()
  return tok


def _score_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
  """Sentencepiece BPE's merges: every split of a token into two tokens, best result first."""
  ids = {t: i for i, t in enumerate(tokens)}
  merges = []
  for token, score in dict(zip(tokens, scores)).items():
    pairs = [(token[:k], token[k:]) for k in range(1, len(token))
             if token[:k] in ids and token[k:] in ids]
    merges += [(l, r, score) for l, r in sorted(pairs, key=lambda p: (ids[p[0]], ids[p[1]]))]
  merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
  return [(l, r) for l, r, _ in merges]


def _sentencepiece(tokens: list[str], merges: list[str] | None,
                   scores: list[float] | None) -> tokenizers.Tokenizer:
  if merges is not None:
    pairs = [tuple(m.split(" ")) for m in merges]
  elif scores is not None:
    pairs = _score_merges(tokens, scores)
  else:
    raise UserError("GGUF sentencepiece tokenizer has neither tokenizer.ggml.merges nor .scores")
  tok = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=pairs,
                                        fuse_unk=True, byte_fallback=True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                               split=False)
  tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(content=" ", left=1)])
  return tok


def build(fields: dict) -> tuple[tokenizers.Tokenizer, dict[str, int | None]]:
  """(tokenizer, {'bos'|'eos'|'pad'|'unk': id or None}) from `tokenizer.ggml.*` metadata.

  fields: the metadata without its `tokenizer.ggml.` prefix ('model', 'tokens', ...).
  """
  kind, tokens = fields.get("model"), list(fields.get("tokens") or [])
  if not tokens:
    raise UserError("GGUF file has no tokenizer.ggml.tokens: it carries no tokenizer "
                    "(pass --tokenizer)")
  if kind == "gpt2":
    tok = _byte_level(tokens, list(fields.get("merges") or []))
    split = _SPLITS.get(fields.get("pre"))
    tok.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False) if split is None else
                         pre_tokenizers.Sequence([
                             pre_tokenizers.Split(Regex(split), behavior="isolated"),
                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
  elif kind == "llama":
    tok = _sentencepiece(tokens, fields.get("merges"), fields.get("scores"))
  else:
    raise UserError(f"unsupported GGUF tokenizer {kind!r} (tokenizer.ggml.model); "
                    "supported: 'gpt2' (byte-level BPE), 'llama' (sentencepiece BPE)")
  ids = {role: (None if fields.get(key) is None else int(fields[key]))
         for role, key in _ROLE_KEYS.items()}
  types = list(fields.get("token_type") or [_NORMAL] * len(tokens))
  alphabet = set(_byte_alphabet().values()) if kind == "gpt2" else None
  # A byte-level CONTROL token spelled outside the byte alphabet is a llama.cpp mislabel
  # (adding it would grow the vocabulary past the model's): transformers skips it too.
  special = {i for i, t in enumerate(types)
             if t == _CONTROL and (alphabet is None or set(tokens[i]) <= alphabet)}
  special |= {i for i in ids.values() if i is not None and 0 <= i < len(tokens)}
  tok.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True)
                          for i in sorted(special)])
  tok.add_tokens([AddedToken(tokens[i], normalized=False, special=False)
                  for i, t in enumerate(types) if t == _USER_DEFINED])
  return tok, ids
