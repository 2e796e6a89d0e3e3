"""A pretrained LLaMA checkpoint (hf:DIR or gguf:FILE) written as an a3_jax export."""

from __future__ import annotations

import tempfile

from a3_jax.convert.loader import has_query_vector, load_pretrained, parse_spec
from a3_jax.errors import UserError
from a3_jax.export import save_export
from a3_jax.history import CONVERTED
from a3_jax.progress import Progress
from a3_jax.rundir import check_out_dir
from a3_jax.tokenizer import save_tokenizer


def convert(source: str, out_dir: str, dtype: str = "float32", report=None) -> str:
  """Converts 'hf:DIR' or 'gguf:FILE' into an export at out_dir; returns its path.
  Nothing is written to out_dir unless the whole export is. `report(line)` hears
  how far it has got, with an ETA, once the checkpoint has passed every check (a
  refused one says only why)."""
  if parse_spec(source)[0] == "export":
    raise UserError(f"--from must be hf:DIR or gguf:FILE, got {source!r}")
  check_out_dir(out_dir)
  progress = None if report is None else Progress("reading weights", report, unit="weights",
                                                  every=0)
  params, config, tokenizer = load_pretrained(source, param_dtype=dtype, progress=progress)
  if report is not None:
    report(f"writing {out_dir}")
  # What a3-generate's warning reads (a3_jax.history): an AR LLaMA's query stream is new.
  history = {CONVERTED: source, "query_stream": has_query_vector(source)}
  with tempfile.TemporaryDirectory() as tmp:
    return save_export(out_dir, params, config, save_tokenizer(tokenizer, tmp),
                       run_flags=history)
