"""`a3-plot WORKDIR`: training loss and validation NLL curves to WORKDIR/curves.png.

Per-token values (loss, validation nll) and per-character ones sit on separate axes.
--out names the image (its extension picks the type: .png, .pdf, .svg, ...) or an
existing directory, which gets curves.png. Metrics records whose loss or nll is not
a number are skipped with a warning.
"""

from __future__ import annotations

import sys

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.errors import UserError

F = flags.FlagValues()
flags.DEFINE_string("out", None, "image path (.png, .pdf, .svg, ...) or an existing directory "
                    "(gets curves.png; default: WORKDIR/curves.png)", flag_values=F)


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-plot"):
    args = cli.parse(F, argv, "a3-plot", __doc__)
    if len(args) != 1:
      raise UserError("usage: a3-plot WORKDIR [--out=PNG]")
    from a3_jax.plot import plot_run  # after parsing: --help stays quick
    print(plot_run(args[0], F.out))
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
