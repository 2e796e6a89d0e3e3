"""`a3-plot WORKDIR`: training loss and validation NLL curves to WORKDIR/curves.png."""

from __future__ import annotations

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.plot import plot_run
from a3_jax.errors import UserError

flags.DEFINE_string("out", None, "PNG path (default: WORKDIR/curves.png)")


def main(argv):
  with cli.user_errors("a3-plot"):
    if len(argv) != 2:
      raise UserError("usage: a3-plot WORKDIR [--out=PNG]")
    print(plot_run(argv[1], flags.FLAGS.out))


def entry():
  cli.run_app(main)


if __name__ == "__main__":
  entry()
