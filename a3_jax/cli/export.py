"""`a3-export`: a training run's checkpoint -> params-only export (or a HF directory).

  a3-export --workdir=runs/default --out=exports/default [--dtype=bfloat16] [--format=hf]
"""

from __future__ import annotations

import os

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.checkpoint import restore_params
from a3_jax.config import ModelConfig
from a3_jax.export import save_export, tokenizer_file
from a3_jax.errors import UserError
from a3_jax.rundir import check_out_dir

F = flags.FLAGS
flags.DEFINE_string("workdir", None, "training run directory (holds checkpoints/)")
flags.DEFINE_string("out", None, "output directory (must not exist or be empty)")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "cast the params (default: as trained)")
flags.DEFINE_enum("format", "a3", ["a3", "hf"],
                  "a3: the export that a3-generate / a3-eval load; hf: a transformers LLaMA directory "
                  "(content stream) with the query vector as the extra tensor model.query_embed")
flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")


def export_run(workdir: str, out: str, dtype: str | None = None, fmt: str = "a3",
               step: int | None = None) -> str:
  if not os.path.exists(workdir):
    raise UserError(f"--workdir={workdir} does not exist")
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a training run directory")
  check_out_dir(out)
  params, meta, step = restore_params(workdir, step)
  config = ModelConfig.from_dict(meta["model_config"])
  tokenizer = tokenizer_file(workdir)
  if fmt == "hf":
    from a3_jax.convert.hf_export import export_hf
    return export_hf(out, params, config, tokenizer, dtype=dtype)
  return save_export(out, params, config, tokenizer, dtype=dtype)


def main(argv):
  with cli.user_errors("a3-export"):
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {argv[1:]}")
    if not F.workdir or not F.out:
      raise UserError("--workdir and --out are required")
    path = export_run(F.workdir, F.out, F.dtype, F.format, F.step)
    print(f"exported {F.workdir} to {path}")


def entry():
  cli.run_app(main)


if __name__ == "__main__":
  entry()
