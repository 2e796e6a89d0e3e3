"""A3 (any-order any-subset autoregressive modeling) in JAX/Flax.

`a3_jax.load(checkpoint)` gives a model that generates, infills and scores text
(a3_jax/api.py); everything else lives in the submodules (docs/design.md §4).
"""


def load(checkpoint: str, tokenizer: str | None = None):
  """The model at `checkpoint` (an a3-export directory, 'hf:DIR' or 'gguf:FILE') as an
  `a3_jax.api.Model`: .generate(), .score(), .conditional(). Imports JAX on first call."""
  from a3_jax.api import load as _load
  return _load(checkpoint, tokenizer)


__all__ = ["load"]
