"""Every console script's flags live in its own FlagValues: all import into one process,
each `main` runs in-process, and --help lists the tool's own flags."""

import importlib

import pytest

TOOLS = {"train": ["workdir", "preset", "model", "init_from", "coordinator_address"],
         "dry_run": ["devices", "compile", "preset", "mesh", "topology", "mfu", "what", "json"],
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


def test_train_flags_are_the_job_fields_with_the_job_defaults():
  """a3-train's flags are generated from Job and TrainConfig: one set of defaults."""
  from absl import flags

  from a3_jax.train import config
  fv = flags.FlagValues()
  config.define_flags(fv)
  fv(["a3-train"])
  assert config.job_from_flags(fv) == config.Job()
  assert config.Job().train.lr == 2e-3 and config.Job().train.warmup_steps == 50
  fv = flags.FlagValues()
  config.define_flags(fv)
  fv(["a3-train", "--steps=3", "--lr=0.5", "--model=remat=full", "--noskip_nonfinite",
      "--objective=ar", "--eval_data=text:x"])
  job = config.job_from_flags(fv)
  assert (job.steps, job.train.lr, job.train.objective, job.eval_data) == (3, 0.5, "ar", "text:x")
  assert job.model_overrides == (("remat", "full"),) and job.train_config.total_steps == 3
