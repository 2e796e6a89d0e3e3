"""`a3-export`: a training run's checkpoint -> params-only export (or a HF directory).

  a3-export --workdir=runs/default --out=exports/default [--dtype=bfloat16] [--format=hf]
"""

from __future__ import annotations

import sys

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.errors import UserError

F = flags.FlagValues()
flags.DEFINE_string("workdir", None, "training run directory (holds checkpoints/)", flag_values=F)
flags.DEFINE_string("out", None, "output directory (must not exist or be empty)", flag_values=F)
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "cast the params (default: as trained)",
                  flag_values=F)
flags.DEFINE_enum("format", "a3", ["a3", "hf"],
                  "a3: the export that a3-generate / a3-eval load; hf: a transformers LLaMA directory "
                  "(content stream) with the query vector as the extra tensor model.query_embed",
                  flag_values=F)
flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=F)


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-export"):
    args = cli.parse(F, argv, "a3-export", __doc__)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    if not F.workdir or not F.out:
      raise UserError("--workdir and --out are required")
    from a3_jax.run_export import export_run  # after parsing: --help stays quick
    path = export_run(F.workdir, F.out, F.dtype, F.format, F.step)
    print(f"exported {F.workdir} to {path}")
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
