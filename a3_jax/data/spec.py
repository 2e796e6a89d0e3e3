"""The grammar of a data spec (`--data`, `--eval_data`), checked without reading data.

    SOURCE                      one source (the schemes of `sources` and `streams`, and
                                `sft:GLOB`: fine-tuning examples, data/sft.py, alone)
    mix:SOURCE=W,SOURCE=W,...   a weighted mixture: W > 0, normalised to sum to 1;
                                the weights are shares of training tokens

`parquet:` and `jsonl:` name their text column (field) with a `#NAME` suffix,
default `text`: `parquet:/data/fineweb/*.parquet#text`. In a mixture, a source
is everything before its last `=`, so a path may hold `=` but not `,`.
a3-dry-run calls `parse` on every flag file; `make_source` and the pipelines
build on what it returns.
"""

from __future__ import annotations

import dataclasses
import math

from a3_jax.errors import UserError

SCHEMES = ("shakespeare", "text:GLOB", "arrayrecord:GLOB", "tfds:NAME[:SPLIT]",
           "parquet:GLOB[#COLUMN]", "jsonl:GLOB[#FIELD]", "sft:GLOB")
MIX = "mix:SOURCE=WEIGHT,SOURCE=WEIGHT,..."
STREAMED = ("parquet", "jsonl")  # read file by file (data.streams), not by random access
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


@dataclasses.dataclass(frozen=True)
class Source:
  """One source of a spec: `scheme:target`, and the text column of a streamed one."""

  spec: str  # as written, e.g. 'parquet:/data/fineweb/*.parquet#text'
  scheme: str  # 'shakespeare', 'text', 'arrayrecord', 'tfds', 'parquet' or 'jsonl'
  target: str  # the glob, or the tfds NAME[:SPLIT]; '' for shakespeare
  column: str = "text"

  @property
  def streamed(self) -> bool:
    return self.scheme in STREAMED


def parse_source(spec: str) -> Source:
  """One source spec -> Source; a UserError names what is wrong with it."""
  if spec == "shakespeare":
    return Source(spec, "shakespeare", "")
  scheme, _, target = spec.partition(":")
  known = {s.partition(":")[0] for s in SCHEMES} - {"shakespeare"}
  if scheme not in known or not target:
    raise UserError(f"unknown data source {spec!r}; expected one of {', '.join(SCHEMES)} "
                     f"or {MIX}")
  column = "text"
  if scheme in STREAMED and "#" in target:
    target, _, column = target.rpartition("#")
    if not column or not target:
      raise UserError(f"data source {spec!r}: expected GLOB#COLUMN with both parts")
  return Source(spec, scheme, target, column)


def parse(spec: str) -> tuple[tuple[Source, float], ...]:
  """A spec -> ((source, weight), ...), weights summing to 1 (one source: weight 1)."""
  if not spec.startswith("mix:"):
    return ((parse_source(spec), 1.0),)
  parts = [p for p in spec[len("mix:"):].split(",") if p.strip()]
  if not parts:
    raise UserError(f"data mixture {spec!r} names no source; expected {MIX}")
  components = []
  for part in parts:
    source_spec, sep, weight_text = part.strip().rpartition("=")
    try:
      weight = float(weight_text)
    except ValueError:
      weight = math.nan
    if not sep or not math.isfinite(weight) or weight <= 0:
      raise UserError(f"data mixture {spec!r}: {part.strip()!r} is not SOURCE=WEIGHT with a "
                       "weight > 0")
    if source_spec.startswith("mix:"):
      raise UserError(f"data mixture {spec!r}: a mixture cannot hold another mixture")
    components.append((parse_source(source_spec), weight))
  specs = [s.spec for s, _ in components]
  if len(set(specs)) < len(specs):
    raise UserError(f"data mixture {spec!r} names a source twice")
  total = sum(w for _, w in components)
  return tuple((source, weight / total) for source, weight in components)
