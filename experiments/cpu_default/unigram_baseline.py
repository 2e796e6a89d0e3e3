"""Unigram NLL per token and per character on the validation batches that the default
a3-train evaluates.

The floor a useful model must beat: token frequencies of the training split
(add-one smoothed), scored on exactly the tokens of `a3_jax.train.validation.evaluate`.

  python experiments/cpu_default/unigram_baseline.py [--workdir=runs/default]
Last line: one JSON object (with the run's last validation metrics if --workdir has them).
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from a3_jax.data.pipeline import make_eval_batches
from a3_jax.data.sources import make_source
from a3_jax.tokenizer import load_tokenizer, token_char_lengths
from a3_jax.metrics import read_metrics
from a3_jax.train.config import Job

_WORKDIR = flags.DEFINE_string("workdir", Job().workdir, "run whose validation metrics to show")


def main(_):
  job = Job()
  tokenizer = load_tokenizer(job.tokenizer)
  counts = np.ones(tokenizer.vocab_size)
  for text in make_source(job.data, split="train"):
    ids = tokenizer.encode(text) + [tokenizer.eos_id]
    counts += np.bincount(ids, minlength=tokenizer.vocab_size)
  logp = np.log(counts / counts.sum())
  batches = make_eval_batches(job.data, tokenizer, seq_len=job.seq_len, split="validation",
                              batch_size=job.batch_size, max_batches=job.eval_batches)
  tokens = np.concatenate([b["tokens"][b["segment_ids"] != 0] for b in batches])
  chars = int(token_char_lengths(tokenizer, tokenizer.vocab_size)[tokens].sum())
  result = {"unigram_nll": float(-logp[tokens].mean()),
            "unigram_nll_per_char": float(-logp[tokens].sum() / chars),
            "eval_tokens": int(tokens.size), "eval_chars": chars}
  valid = [r for r in read_metrics(_WORKDIR.value) if r.get("split") == "validation"]
  if valid:
    result.update({k: v for k, v in valid[-1].items() if k.startswith("nll_") or k == "step"})
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
