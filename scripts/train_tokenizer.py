"""Trains the embedded sentencepiece tokenizer on the TRAIN split of the embedded corpus.

    python scripts/train_tokenizer.py [--output a3_jax/data/assets/shakespeare.model]

A unigram model with 2048 pieces and ids pad=0, unk=1, bos=2, eos=3. The
settings are lossless (decode(encode(text)) == text for any text): no
normalisation, whitespace kept as is, '\\n' a piece of its own, and unseen
characters spelled as UTF-8 bytes. Training is deterministic (one thread, the
whole split, no sampling), so rerunning it reproduces the shipped file.
"""

import argparse
import io
import pathlib

import sentencepiece as spm

from a3_jax.data.corpus import asset_path, load_works

VOCAB_SIZE = 2048


def train(vocab_size: int = VOCAB_SIZE) -> bytes:
  """The serialized model proto trained on the train split."""
  model = io.BytesIO()
  lines = [line for _, text in load_works("train") for line in text.splitlines()]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model,
      model_type="unigram", vocab_size=vocab_size,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      byte_fallback=True, user_defined_symbols=["\n"],
      allow_whitespace_only_pieces=True, split_digits=True, character_coverage=1.0,
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
      minloglevel=2)
  return model.getvalue()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", type=pathlib.Path,
                      default=pathlib.Path(str(asset_path("shakespeare.model"))))
  parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
  args = parser.parse_args()
  args.output.write_bytes(train(args.vocab_size))
  print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")


if __name__ == "__main__":
  main()
