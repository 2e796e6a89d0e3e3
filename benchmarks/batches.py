"""The batch the train-step benchmarks time: random tokens, one document per row."""

import numpy as np


def one_document_rows(vocab_size: int, b: int, t: int) -> dict:
  rng = np.random.default_rng(0)
  return {"tokens": rng.integers(0, vocab_size, (b, t)).astype(np.int32),
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}
