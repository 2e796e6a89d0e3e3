"""The paper run at fixture size: a flag file that differs from a paper flag file only in
size (and in where the data and the base model are), on Parquet + JSONL.zst shards
written here; trained, killed, resumed and exported."""

import os
import subprocess
import sys

import pytest

from cli_helpers import kill_after_checkpoint, subprocess_env, tiny_export
from shard_files import documents, write_jsonl, write_parquet

from a3_jax.metrics import read_metrics

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PAPER = os.path.join(ROOT, "experiments", "paper", "llama3.2-1b_8xh100.flags")
# What a fixture may change: sizes, and the placeholders a user replaces.
SIZE = {"preset", "mesh", "grad_accum", "steps", "batch_size", "seq_len", "curriculum",
        "warmup_steps", "eval_every", "save_every", "eval_batches"}
PLACES = {"workdir", "init_from", "data", "eval_data"}


def _fixture_flags(tmp_path) -> str:
  data = tmp_path / "data"
  for name in ("fineweb/sample/100BT", "slimpajama/train/chunk1", "slimpajama/validation/chunk1"):
    (data / name).mkdir(parents=True)
  web, pajama = documents("web", 90), documents("pajama", 60)
  for i in range(3):
    write_parquet(data / f"fineweb/sample/100BT/000_{i:05d}.parquet", web[i::3])
  for i in range(2):
    write_jsonl(data / f"slimpajama/train/chunk1/example_train_{i}.jsonl.zst", pajama[i::2])
  write_jsonl(data / "slimpajama/validation/chunk1/example_holdout_0.jsonl.zst",
              documents("held out", 20))
  overrides = {
      "preset": "tiny", "mesh": "data:-1", "grad_accum": "1", "steps": "12",
      "batch_size": "4", "seq_len": "32", "curriculum": "ar:3,block:2:3,block:4:2,perm:4:2,perm:8:2",
      "warmup_steps": "2", "eval_every": "6", "save_every": "4", "eval_batches": "1",
      "workdir": str(tmp_path / "run"), "init_from": tiny_export(tmp_path),
      "data": (f"mix:parquet:{data}/fineweb/sample/100BT/*.parquet=0.5,"
               f"jsonl:{data}/slimpajama/train/chunk1/*.jsonl.zst=0.5"),
      "eval_data": f"jsonl:{data}/slimpajama/validation/chunk1/*.jsonl.zst"}
  assert set(overrides) <= SIZE | PLACES
  with open(PAPER) as f:
    lines = [line.replace("experiments/paper/", f"{ROOT}/experiments/paper/")
             for line in f.read().splitlines()
             if line.partition("=")[0].lstrip("-") not in overrides]
  path = tmp_path / "fixture.flags"
  path.write_text("\n".join(lines + [f"--{k}={v}" for k, v in overrides.items()]) + "\n")
  return str(path)


def _train(flagfile, workdir, check=True, **popen):
  command = [sys.executable, "-m", "a3_jax.cli.train", f"--flagfile={flagfile}",
             f"--workdir={workdir}"]
  if popen:
    return subprocess.Popen(command, env=subprocess_env(), **popen)
  proc = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(),
                        timeout=600)
  assert not check or proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _losses(workdir) -> dict:
  return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if "split" not in r}


@pytest.mark.slow
def test_fixture_sized_paper_run_trains_resumes_after_a_kill_and_exports(tmp_path):
  flagfile = _fixture_flags(tmp_path)
  killed = tmp_path / "killed"
  proc = _train(flagfile, killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  kill_after_checkpoint(proc, killed, 8)
  resumed = _train(flagfile, killed)
  assert "resumed from step" in resumed.stdout
  # (that the mixture resumes bit-exactly: test_data_streams; the losses of a killed and
  # resumed run equal an uninterrupted one's: test_train_job)
  assert sorted(_losses(killed)) == list(range(1, 13))
  valid = [r for r in read_metrics(str(killed)) if r.get("split") == "validation"]
  assert valid[-1]["step"] == 12 and 0 < valid[-1]["nll_ar"] < 20
  shares = [r for r in read_metrics(str(killed)) if r.get("split") == "data"]
  assert shares[-1]["step"] == 12 and shares[-1]["weights"] == [0.5, 0.5]
  assert all(abs(share - 0.5) < 0.15 for share in shares[-1]["token_shares"])  # 48 rows so far
  assert "step 12 data token shares parquet:" in resumed.stdout

  from cli_helpers import run_main
  code, out, err = run_main("a3_jax.cli.export", f"--workdir={killed}",
                            f"--out={tmp_path / 'exported'}", "--dtype=bfloat16")
  assert code == 0, err
  from a3_jax.export import load_export, run_flags
  params, config, tokenizer = load_export(str(tmp_path / "exported"))
  assert config.param_dtype == "bfloat16" and config.d_model == 64 and tokenizer
  assert run_flags(str(tmp_path / "exported"))["data"].startswith("mix:parquet:")
