"""Every console script's flags live in its own FlagValues: all import into one process,
each `main` runs in-process, and --help lists the tool's own flags."""

import importlib

import pytest

TOOLS = {"train": ["workdir", "preset", "model", "init_from", "coordinator_address"],
         "dry_run": ["devices", "compile", "preset", "mesh"],
         "export": ["workdir", "out", "dtype", "format"],
         "plot": ["out"],
         "convert": ["from", "out", "dtype"],
         "generate": ["checkpoint", "prompt", "decoder", "json"],
         "eval": ["checkpoint", "text_file", "head", "json"]}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_lists_the_tools_own_flags_and_bad_flags_exit_2(tool, capsys):
  main = importlib.import_module(f"a3_jax.cli.{tool}").main
  with pytest.raises(SystemExit) as exit_info:
    main(["--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  for name in TOOLS[tool]:
    assert f"--{name}" in out, (tool, name)
  assert "--helpfull" not in out
  with pytest.raises(SystemExit) as exit_info:
    main(["--no_such_flag=1"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f"a3-{tool.replace('_', '-')}: error:") and "no_such_flag" in err
  assert err.count("\n") == 1


def test_help_loads_no_jax():
  """--help answers in a fraction of a second: parsing the flags imports no JAX (only
  a3-train and a3-dry-run still do, through the trainer)."""
  import subprocess
  import sys
  code = ("import sys\n"
          "from a3_jax.cli import common, convert, eval, export, generate, plot, lm_eval_harness\n"
          "for m in (convert, eval, export, generate, plot):\n"
          "  try:\n"
          "    m.main(['--help'])\n"
          "  except SystemExit:\n"
          "    pass\n"
          "assert 'jax' not in sys.modules, 'jax imported'\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count("flags:") == 5
