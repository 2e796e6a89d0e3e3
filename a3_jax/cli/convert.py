"""a3-convert: a pretrained LLaMA checkpoint -> an a3_jax export directory.

  a3-convert --from=hf:/ckpt/SmolLM2-135M --out=exports/smollm2
  a3-convert --from=gguf:/models/model.Q4_1.gguf --out=exports/x --dtype=bfloat16

The export (a3_jax.export) holds the weights, a ModelConfig and the tokenizer
that came with the checkpoint; the query-stream vector starts small and random.
Bad input exits with status 2 and one line on stderr, and writes nothing to --out.
(argparse rather than absl flags: `main(argv)` runs in-process, e.g. in tests,
without registering process-global flags that a3-export also defines.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from a3_jax.cli.common import user_errors
from a3_jax.convert.loader import load_pretrained, parse_spec
from a3_jax.tokenizer import save_tokenizer
from a3_jax.export import save_export
from a3_jax.errors import UserError
from a3_jax.rundir import check_out_dir


def convert(source: str, out_dir: str, dtype: str = "float32") -> str:
  """Converts 'hf:DIR' or 'gguf:FILE' into an export at out_dir; returns its path."""
  if parse_spec(source)[0] == "export":
    raise UserError(f"--from must be hf:DIR or gguf:FILE, got {source!r}")
  check_out_dir(out_dir)
  params, config, tokenizer = load_pretrained(source, param_dtype=dtype)
  with tempfile.TemporaryDirectory() as tmp:
    return save_export(out_dir, params, config, save_tokenizer(tokenizer, tmp))


class _Parser(argparse.ArgumentParser):

  def error(self, message):  # one line and exit 2, like every other user error
    raise UserError(message)


def main(argv: list[str] | None = None) -> int:
  parser = _Parser(
      prog="a3-convert", allow_abbrev=False,
      description="Convert a Hugging Face LLaMA directory or a GGUF file to an a3_jax export.")
  parser.add_argument("--from", dest="source", required=True, metavar="hf:DIR|gguf:FILE",
                      help="the pretrained checkpoint")
  parser.add_argument("--out", required=True, metavar="DIR", help="export directory to write")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="dtype of the exported weights")
  with user_errors("a3-convert"):
    args = parser.parse_args(argv)
    out = convert(args.source, args.out, args.dtype)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
