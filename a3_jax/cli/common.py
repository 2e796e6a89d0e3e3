"""Shared command-line behaviour: each tool parses its own flags, a `UserError` is one
clear line and exit code 2.

Every cli module holds its flags in its own `flags.FlagValues` (never absl's global
FLAGS), so all of them import into one process and each `main(argv)` can be called
in-process, e.g. by tests. `--help` lists the tool's own flags.
"""

from __future__ import annotations

import contextlib
import sys

from absl import flags, logging

from a3_jax import cpu_tuning
from a3_jax.errors import UserError

HELP_ARGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


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


def _flag_help(fv: flags.FlagValues) -> str:
  lines = []
  for name, flag in sorted(fv._flags().items()):  # noqa: SLF001 (absl has no public listing)
    if name != flag.name:  # a short alias
      continue
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    lines.append(f"  --{name}: {flag.help}{default}")
  lines.append("  --flagfile=FILE: read flags from FILE, one per line")
  return "\n".join(lines)


def parse(fv: flags.FlagValues, argv: list[str] | None, program: str, doc: str | None) -> list[str]:
  """Parses the arguments `argv` (default sys.argv[1:]; no program name) into `fv`;
  returns the positional arguments. --help prints `doc` and fv's flags and exits 0; a malformed
  flag is one line and exit 2. Parsing again (in-process) starts from the defaults."""
  argv = list(sys.argv[1:] if argv is None else argv)
  cpu_tuning.apply()  # before JAX starts (a no-op once it has)
  if any(a in HELP_ARGS for a in argv):
    print(f"{(doc or program).strip()}\n\nflags:\n{_flag_help(fv)}")
    sys.exit(0)
  fv.unparse_flags()
  try:
    remaining = fv([program, *argv])
  except flags.Error as e:
    _fail(program, str(e).splitlines()[0].replace("ERROR:: ", "") if str(e) else type(e).__name__)
  except UnicodeDecodeError as e:  # absl reads --flagfile as text
    _fail(program, f"--flagfile is not a text file ({e.reason} at byte {e.start})")
  except OSError as e:
    _fail(program, f"--flagfile: {e}")
  if not flags.FLAGS.is_parsed():  # absl logging (and grain's workers) read the global flags
    flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  return remaining[1:]

