"""`a3-lm-eval`: lm-evaluation-harness's own command line, with `--model a3_jax`.

  a3-lm-eval --model a3_jax --model_args pretrained=exports/default --tasks piqa \
    --output_path results/ [--include_path my_tasks/] [--log_samples]

Every flag is lm-eval's (`a3-lm-eval --help`); results are written where lm-eval
writes them (--output_path). lm-eval looks models up in its own registry only,
so this command imports a3_jax.lm_eval_model (which registers `a3_jax`) and then
runs lm-eval's `cli_evaluate`. Needs `pip install -e ".[lm-eval]"`.
"""

from __future__ import annotations

import sys

from a3_jax.cli import common as cli
from a3_jax.errors import UserError


def main(argv: list[str] | None = None) -> int:
  """Runs lm-eval's command line on `argv` (default sys.argv[1:]), in this process."""
  with cli.user_errors("a3-lm-eval"):
    try:
      from lm_eval.__main__ import cli_evaluate
    except ImportError:
      raise UserError("lm-eval is not installed: pip install -e \".[lm-eval]\" "
                      "(or pip install a3_jax[lm-eval])") from None
    import a3_jax.lm_eval_model  # noqa: F401  (registers --model a3_jax)
    saved = sys.argv
    sys.argv = ["a3-lm-eval", *(sys.argv[1:] if argv is None else argv)]  # lm-eval reads it
    try:
      cli_evaluate()
    finally:
      sys.argv = saved
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
