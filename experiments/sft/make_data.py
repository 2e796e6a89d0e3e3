"""The word-reversal task of experiments/sft: prompt/response JSON lines.

  {"prompt": "Reverse: king night sword. Reversed:", "response": "sword night king"}

Three distinct words from 41 that the embedded tokenizer spells as one token each
(so the response is 3 tokens + EOS); 4,000 training and 200 test examples, no ordered
triple shared between them, drawn from --seed.

  python experiments/sft/make_data.py --out=runs/sft/data
"""

from __future__ import annotations

import json
import os
import random

from absl import app, flags

WORDS = ("king queen lord lady night day sword crown heart blood love death fire water earth "
         "heaven gold man woman father mother son daughter friend enemy horse house tree moon "
         "sun star wind sea eye hand head word time life world name").split()
_OUT = flags.DEFINE_string("out", "runs/sft/data", "directory for train.jsonl and test.jsonl")
_TRAIN = flags.DEFINE_integer("train", 4000, "training examples")
_TEST = flags.DEFINE_integer("test", 200, "test examples")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the draw")


def example(words: list[str]) -> dict:
  return {"prompt": "Reverse: " + " ".join(words) + ". Reversed:",
          "response": " ".join(reversed(words))}


def write(out: str, train: int = 4000, test: int = 200, seed: int = 0) -> dict:
  """Writes OUT/train.jsonl and OUT/test.jsonl; returns their paths."""
  rng = random.Random(seed)
  triples: dict[tuple[str, ...], None] = {}
  while len(triples) < train + test:
    triples.setdefault(tuple(rng.sample(WORDS, 3)))
  triples = list(triples)
  os.makedirs(out, exist_ok=True)
  paths = {}
  for name, part in (("train", triples[:train]), ("test", triples[train:])):
    paths[name] = os.path.join(out, f"{name}.jsonl")
    with open(paths[name], "w") as f:
      f.writelines(json.dumps(example(list(t))) + "\n" for t in part)
  return paths


def main(argv):
  del argv
  print(json.dumps(write(_OUT.value, _TRAIN.value, _TEST.value, _SEED.value)))


if __name__ == "__main__":
  app.run(main)
