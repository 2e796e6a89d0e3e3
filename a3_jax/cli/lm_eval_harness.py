"""`a3-lm-eval`: lm-evaluation-harness's own command line, with `--model a3_jax`.

  a3-lm-eval --model_args pretrained=exports/default --tasks piqa \
    --output_path results/ [--include_path my_tasks/] [--log_samples]

--model defaults to a3_jax (the a3_jax model's arguments: `a3-lm-eval --help`,
printed before lm-eval's own flags). Every other flag is lm-eval's; results are
written where lm-eval writes them (--output_path). lm-eval looks models up in its
own registry only, so this command imports a3_jax.lm_eval_model (which registers
`a3_jax`) and then runs lm-eval's `cli_evaluate`. Needs `pip install -e ".[lm-eval]"`.
"""

from __future__ import annotations

import sys

from a3_jax.cli import common as cli
from a3_jax.errors import UserError

_SUBCOMMANDS = ("run", "ls", "validate")  # lm-eval's; anything else means `run`


def lm_eval_argv(args: list[str]) -> list[str]:
  """lm-eval's arguments for ours: help is `run --help`; --model defaults to a3_jax."""
  if not args or "-h" in args or "--help" in args:
    return ["run", "--help"]
  if args[0] in _SUBCOMMANDS or any(a == "--model" or a.startswith("--model=") for a in args):
    return args
  return ["--model", "a3_jax", *args]


def main(argv: list[str] | None = None) -> int:
  """Runs lm-eval's command line on `argv` (default sys.argv[1:]), in this process."""
  with cli.user_errors("a3-lm-eval"):
    try:
      from lm_eval.__main__ import cli_evaluate
    except ImportError:
      raise UserError("lm-eval is not installed: pip install -e \".[lm-eval]\" "
                      "(or pip install a3_jax[lm-eval])") from None
    from a3_jax import lm_eval_model  # registers --model a3_jax
    args = lm_eval_argv(list(sys.argv[1:] if argv is None else argv))
    if args == ["run", "--help"]:
      print(f"{__doc__}\nThe a3_jax model ({lm_eval_model.__name__}):\n{lm_eval_model.__doc__}\n"
            "lm-eval run's flags:", flush=True)
    saved = sys.argv
    sys.argv = ["a3-lm-eval", *args]  # lm-eval reads it
    try:
      cli_evaluate()
    finally:
      sys.argv = saved
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
