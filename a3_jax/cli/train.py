"""`a3-train`: the training job (absl flags; defaults train on the embedded corpus).

  a3-train                                     # CPU default, ~10 minutes
  a3-train --flagfile=experiments/paper/llama3.2-1b_v5p.flags

The flags are a3_jax.train.config's fields (Job, TrainConfig), defaults and help included.
"""

from __future__ import annotations

import sys

from absl import flags

from a3_jax import distributed
from a3_jax.cli import common as cli
from a3_jax.errors import UserError
from a3_jax.train import config
from a3_jax.train.loop import run

F = flags.FlagValues()
F.append_flag_values(distributed.FLAGS)
config.define_flags(F)


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-train"):
    args = cli.parse(F, argv, "a3-train", __doc__)
    distributed.initialize_from_flags(F)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    run(config.job_from_flags(F))
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
