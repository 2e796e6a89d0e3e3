"""`a3-plot WORKDIR`: training loss and validation NLL curves to WORKDIR/curves.png."""

from __future__ import annotations

import sys

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.plot import plot_run
from a3_jax.errors import UserError

F = flags.FlagValues()
flags.DEFINE_string("out", None, "PNG path (default: WORKDIR/curves.png)", flag_values=F)


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-plot"):
    args = cli.parse(F, argv, "a3-plot", __doc__)
    if len(args) != 1:
      raise UserError("usage: a3-plot WORKDIR [--out=PNG]")
    print(plot_run(args[0], F.out))
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
