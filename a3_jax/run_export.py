"""A training run's checkpoint -> an export (a3-export's library side).

Its own module because it joins the checkpoint reader with both export formats:
`export` (ours) and `convert.hf_export` (transformers), which itself builds on `export`.
"""

from __future__ import annotations

import os

from a3_jax.checkpoint import restore_params
from a3_jax.config import ModelConfig
from a3_jax.convert.hf_export import export_hf
from a3_jax.errors import UserError
from a3_jax.export import run_flags, save_export, tokenizer_file
from a3_jax.rundir import check_out_dir


def export_run(workdir: str, out: str, dtype: str | None = None, fmt: str = "a3",
               step: int | None = None) -> str:
  """A training run's checkpoint (`step`, default the latest) -> an export in `out`
  (fmt 'a3') or a transformers LLaMA directory (fmt 'hf'); returns its path."""
  if not os.path.exists(workdir):
    raise UserError(f"--workdir={workdir} does not exist")
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a training run directory")
  check_out_dir(out)
  params, meta, step = restore_params(workdir, step, dtype)
  config = ModelConfig.from_dict(meta["model_config"])
  tokenizer = tokenizer_file(workdir)
  if fmt == "hf":
    return export_hf(out, params, config, tokenizer, dtype=dtype)
  flags_of_run = {**run_flags(workdir), "seq_len": meta["seq_len"], "step": step}
  return save_export(out, params, config, tokenizer, dtype=dtype, run_flags=flags_of_run)
