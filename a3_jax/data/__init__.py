"""Data: the embedded Shakespeare corpus, tokenizers, document sources, grain pipelines."""

from a3_jax.data.corpus import VALIDATION_WORKS, load_works
from a3_jax.data.pipeline import make_eval_batches, make_train_iterator
from a3_jax.data.sources import make_source
from a3_jax.data.tokenizer import Tokenizer, load_tokenizer

__all__ = ["VALIDATION_WORKS", "Tokenizer", "load_tokenizer", "load_works", "make_eval_batches",
           "make_source", "make_train_iterator"]
