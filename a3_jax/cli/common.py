"""Shared command-line behaviour: a `UserError` is one clear line and exit code 2."""

from __future__ import annotations

import contextlib
import os
import sys

from absl import app, flags, logging

from a3_jax.errors import UserError


def _fail(program: str, message: str):
  print(f"{program}: error: {message}", file=sys.stderr)
  sys.exit(2)


@contextlib.contextmanager
def user_errors(program: str):
  """Turns a UserError into one line on stderr and exit code 2; other errors are bugs
  and keep their traceback."""
  try:
    yield
  except UserError as e:
    _fail(program, str(e).splitlines()[0] if str(e) else type(e).__name__)
  except KeyboardInterrupt:
    print(f"{program}: interrupted", file=sys.stderr)
    sys.exit(130)


def _parse_flags(argv):
  program = os.path.basename(argv[0])
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(program, str(e))
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save step at INFO
    flags.FLAGS.verbosity = logging.WARNING
  return remaining


def run_app(main):
  """absl's app.run, with malformed flags reported like any other user error."""
  app.run(main, flags_parser=_parse_flags)
