"""The embedded corpus: 42 public-domain Shakespeare works (see assets/ATTRIBUTION.md).

The validation split is fixed here, in code: three whole plays (a tragedy, a
romance and a comedy, ~6 % of the characters), so no document is shared
between the splits and the split never depends on a seed.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import lzma
from a3_jax.errors import UserError

SPLITS = ("train", "validation", "all")
VALIDATION_WORKS = ("macbeth", "tempest", "twelfth_night")


def asset_path(name: str):
  """A `Traversable` for the package data file `assets/<name>`."""
  return importlib.resources.files(__package__) / "assets" / name


@functools.cache
def _all_works() -> tuple[tuple[str, str], ...]:
  # Cached: the decompressed corpus is ~5 MB and every pipeline re-reads it.
  lines = lzma.decompress(asset_path("shakespeare.jsonl.xz").read_bytes()).decode("utf-8")
  return tuple((work["name"], work["text"]) for work in map(json.loads, lines.splitlines()))


def load_works(split: str) -> list[tuple[str, str]]:
  """(name, text) of every work in `split` ("train", "validation" or "all"), sorted by name."""
  if split not in SPLITS:
    raise UserError(f"unknown split {split!r} of the embedded corpus; expected one of {SPLITS}")
  return [(name, text) for name, text in _all_works()
          if split == "all" or (name in VALIDATION_WORKS) == (split == "validation")]
