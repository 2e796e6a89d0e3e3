"""`a3-convert`: a pretrained LLaMA checkpoint -> an a3_jax export directory.

  a3-convert --from=hf:/ckpt/SmolLM2-135M --out=exports/smollm2
  a3-convert --from=gguf:/models/model.Q4_1.gguf --out=exports/x --dtype=bfloat16

The export (a3_jax.export) holds the weights, a ModelConfig and the tokenizer
that came with the checkpoint; the query-stream vector starts small and random.
Bad input exits with status 2 and one line on stderr, and writes nothing to --out.
"""

from __future__ import annotations

import sys

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.errors import UserError

F = flags.FlagValues()
flags.DEFINE_string("from", None, "the pretrained checkpoint: hf:DIR | gguf:FILE", flag_values=F)
flags.DEFINE_string("out", None, "export directory to write (must not exist or be empty)",
                    flag_values=F)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the exported weights",
                  flag_values=F)


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-convert"):
    args = cli.parse(F, argv, "a3-convert", __doc__)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    if not F["from"].value or not F.out:
      raise UserError("--from and --out are required")
    from a3_jax.convert.to_export import convert  # after parsing: --help stays quick
    out = convert(F["from"].value, F.out, F.dtype,
                  report=lambda line: print(line, file=sys.stderr, flush=True))
  print(f"wrote {out}")
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
