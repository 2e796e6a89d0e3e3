"""The a3-train job end to end: resume exactness, preemption, export, bad input."""

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import kill_after_checkpoint, subprocess_env

from a3_jax.metrics import read_metrics

TINY = ["--preset=tiny", "--batch_size=4", "--seq_len=32", "--eval_batches=1",
        "--curriculum=causal:2,ar:2,block:2:4,perm:4:4", "--warmup_steps=2"]


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "a3_jax.cli.train", f"--workdir={workdir}", *TINY, *extra]


def _run(workdir, *extra, check=True):
  proc = subprocess.run(_cmd(workdir, *extra), capture_output=True, text=True, env=subprocess_env(),
                        timeout=600)
  if check and proc.returncode:
    raise AssertionError(f"a3-train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def _train_losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "split" not in r}


@pytest.mark.slow
def test_resume_after_sigkill_logs_the_same_losses(tmp_path):
  straight = tmp_path / "straight"
  _run(straight, "--steps=12", "--save_every=4", "--eval_every=100")
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(killed, "--steps=12", "--save_every=4", "--eval_every=100"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
  kill_after_checkpoint(proc, killed, 8)
  _run(killed, "--steps=12", "--save_every=4", "--eval_every=100")
  expected, got = _train_losses(straight), _train_losses(killed)
  assert sorted(got) == list(range(1, 13))
  assert got == expected  # bit-exact on CPU: same programs, state, data and keys
  valid = [r for r in read_metrics(killed) if r.get("split") == "validation"]
  assert valid[-1]["step"] == 12 and 0 < valid[-1]["nll_causal"] < 20  # the causal stage's


@pytest.mark.slow
def test_sigterm_saves_before_exit_and_export_loads(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cmd(workdir, "--steps=100000", "--save_every=100000"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
  deadline = time.time() + 300
  while len(_train_losses(workdir)) < 3:
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps and max(steps) >= 3
  from a3_jax.export import load_export
  from a3_jax.run_export import export_run
  out_dir = export_run(str(workdir), str(tmp_path / "export"), dtype="bfloat16")
  params, config, tokenizer = load_export(out_dir)
  assert config.param_dtype == "bfloat16" and tokenizer.endswith("tokenizer.model")
  assert str(params["params"]["embed"].dtype) == "bfloat16"
  from a3_jax.export import run_flags
  assert run_flags(str(workdir))["seq_len"] == run_flags(out_dir)["seq_len"] == 32


def _tree_digest(path):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(full.encode())
      with open(full, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


@pytest.mark.parametrize("flags, message", [
    (["--preset=huge"], "unknown preset 'huge'"),
    (["--curriculum=ar:4,bogus:2:4"], "unknown grouping strategy 'bogus:2'"),
    (["--curriculum=ar,perm:4"], "must end with ':STEPS'"),
    (["--data=text:/nonexistent/*.txt"], "nonexistent"),
    (["--mesh=data:3"], "uses 3 devices"),
    (["--steps=abc"], "--steps"),
    (["--model=d_model=x"], "d_model"),
])
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, flags, message):
  workdir = tmp_path / "run"
  proc = _run(workdir, "--steps=2", *flags, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip() and "libtpu" not in l
           and "xla_bridge" not in l]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  assert not workdir.exists()


@pytest.mark.slow
def test_checkpoint_of_another_config_is_refused_untouched(tmp_path):
  workdir = tmp_path / "run"
  _run(workdir, "--steps=2", "--save_every=2")
  before = _tree_digest(workdir)
  proc = _run(workdir, "--steps=4", "--model=d_model=32", "--model=head_dim=8", check=False)
  assert proc.returncode == 2
  assert "different model config" in proc.stderr and "d_model" in proc.stderr
  assert _tree_digest(workdir) == before


@pytest.mark.slow
def test_resuming_an_init_from_run_does_not_read_the_pretrained_weights(tmp_path, monkeypatch):
  from hf_reference import make_hf_llama

  from a3_jax.train import config, loop
  hf_dir = tmp_path / "hf"
  make_hf_llama(hf_dir)
  (tmp_path / "docs.txt").write_text(" ".join(f"w{i % 97}" for i in range(400)))
  job = config.Job(workdir=str(tmp_path / "run"), steps=2, batch_size=4, seq_len=16,
                    curriculum="ar:2", data=f"text:{tmp_path}/docs.txt", eval_batches=1,
                    save_every=2, init_from=f"hf:{hf_dir}", mesh="data:2,fsdp:2,tensor:2")
  loop.run(job)

  def no_weights(*args, **kwargs):
    raise AssertionError("a resumed run must restore its own checkpoint, not --init_from")
  monkeypatch.setattr(loop, "load_pretrained", no_weights)
  loop.run(dataclasses.replace(job, steps=4))
  assert sorted(_train_losses(job.workdir)) == [1, 2, 3, 4]
