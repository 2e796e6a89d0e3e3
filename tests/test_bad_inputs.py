"""Bad inputs, damaged files and signals: one line on stderr, exit code 2, nothing changed.

Every probe runs in-process: a console script's `main(argv)`, or the library function
it calls inside the script's own `user_errors` wrapper; each compares a digest of the
workdir / output directory before and after. One tiny run (trained once, exported
once, per module) feeds them all. Only the signal and kill -9 tests (slow) start
processes.
"""

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from cli_helpers import subprocess_env

from a3_jax import rundir
from a3_jax.checkpoint import restore_params
from a3_jax.cli import convert as convert_cli
from a3_jax.cli import dry_run as dry_run_cli
from a3_jax.cli import eval as eval_cli
from a3_jax.cli import export as export_cli
from a3_jax.cli import generate as generate_cli
from a3_jax.cli import plot as plot_cli
from a3_jax.cli import train as train_cli
from a3_jax.cli.common import user_errors
from a3_jax.convert.loader import load_model
from a3_jax.data.text_file import read_texts
from a3_jax.run_export import export_run
from a3_jax.plot import plot_run
from a3_jax.decoding.prompt import parse_prompt
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.metrics import read_metrics
from a3_jax.tokenizer import load_tokenizer
from a3_jax.train.config import Job, TrainConfig
from a3_jax.train.loop import run
from a3_jax.train.signals import Preemption

STEPS = 2
JOB = Job(workdir="", preset="tiny", steps=STEPS, batch_size=8, seq_len=32, eval_batches=1,
          curriculum="ar:1,perm:4:2", eval_every=100, save_every=1, mesh="data:-1",
          train=TrainConfig(lr=1e-3, warmup_steps=1))


def digest(path) -> str:
  """Names and bytes of every file under path (or of the file itself)."""
  h = hashlib.sha256()
  path = str(path)
  if os.path.isfile(path):
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files) + [d + "/" for d in dirs]:
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode())
      if os.path.isfile(full):
        with open(full, "rb") as f:
          h.update(f.read())
  return h.hexdigest()


def refused(capsys, program, call, message, *unchanged, warning=None):
  """Runs call() as console script `program` would: exit 2, one line naming `message`,
  and every path in `unchanged` byte-identical (an absent one stays absent). A line that
  starts with `warning` (one the call is expected to print first) is not counted."""
  before = [(p, os.path.exists(p) and digest(p)) for p in map(str, unchanged)]
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info, user_errors(program):
    call()
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()
           and not (warning and l.startswith(warning))]
  assert exit_info.value.code == 2, err
  assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), err
  assert message in lines[0], lines[0]
  for path, was in before:
    assert (os.path.exists(path) and digest(path)) == was, f"{path} changed"
  return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """One tiny run (STEPS steps, a checkpoint per step), its export and its HF export."""
  root = tmp_path_factory.mktemp("bad_inputs")
  workdir = str(root / "run")
  run(dataclasses.replace(JOB, workdir=workdir))
  export = export_run(workdir, str(root / "export"))
  hf = export_run(workdir, str(root / "hf"), fmt="hf")
  return {"root": root, "run": workdir, "export": export, "hf": hf}


def copy_of(made, name, tmp_path):
  target = str(tmp_path / name)
  shutil.copytree(made[name], target)
  return target


def job(workdir, **changes):
  return dataclasses.replace(JOB, workdir=str(workdir), **changes)


def largest_file(directory):
  return max(glob.glob(os.path.join(directory, "**", "*"), recursive=True), key=os.path.getsize)


# a3-train: what a workdir may be --------------------------------------------------------


@pytest.mark.parametrize("kind, message", [
    ("export", "holds an a3_jax export"),
    ("hf", "holds a model checkpoint"),
    ("unrelated", "not empty and not a training run directory"),
    ("file", "is a file, not a directory"),
])
def test_train_refuses_a_workdir_that_holds_something_else(made, tmp_path, capsys, kind, message):
  if kind in ("export", "hf"):
    workdir = copy_of(made, kind, tmp_path)
  elif kind == "unrelated":
    workdir = tmp_path / "notes"
    workdir.mkdir()
    (workdir / "thesis.tex").write_text("mine")
  else:
    workdir = tmp_path / "file"
    workdir.write_text("not a directory")
  refused(capsys, "a3-train", lambda: run(job(workdir)), message, workdir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_train_and_export_refuse_read_only_directories(made, tmp_path, capsys):
  locked_dir = tmp_path / "ro"
  locked_dir.mkdir()
  os.chmod(locked_dir, 0o555)
  try:
    refused(capsys, "a3-train", lambda: run(job(locked_dir / "run")), "not writable", locked_dir)
    refused(capsys, "a3-export", lambda: export_run(made["run"], str(locked_dir / "out")),
            "not writable", locked_dir)
  finally:
    os.chmod(locked_dir, 0o755)


@pytest.mark.parametrize("changes, message", [
    (dict(max_to_keep=0), "--max_to_keep must be >= 1"),
    (dict(eval_batches=0), "--eval_batches must be >= 1"),
    (dict(steps=-5), "--steps must be >= 1"),
    (dict(save_every=0), "--save_every must be >= 1"),
])
def test_train_refuses_out_of_range_counts(tmp_path, capsys, changes, message):
  refused(capsys, "a3-train", lambda: run(job(tmp_path / "run", **changes)), message,
          tmp_path / "run")


@pytest.mark.parametrize("field, value, message", [
    ("lr", float("nan"), "--lr must be a finite number > 0, got nan"),
    ("lr", float("inf"), "--lr must be a finite number > 0, got inf"),
    ("lr", -1.0, "--lr must be a finite number > 0, got -1.0"),
    ("clip_norm", float("nan"), "--clip_norm must be a finite number > 0"),
    ("weight_decay", float("-inf"), "--weight_decay must be a finite number >= 0"),
    ("z_loss", float("nan"), "--z_loss must be a finite number >= 0"),
    ("total_steps", -5, "--steps must be >= 1, got -5"),
])
def test_train_refuses_non_finite_and_out_of_range_numbers(capsys, field, value, message):
  refused(capsys, "a3-train", lambda: TrainConfig(**{field: value}), message)


# a3-train: the lock, re-runs, damaged checkpoints and metrics ------------------------------


def test_a_workdir_in_use_is_refused_untouched(made, tmp_path, capsys):
  workdir = copy_of(made, "run", tmp_path)
  holder = os.getppid()  # alive, and not this process
  with open(os.path.join(workdir, rundir.LOCK_NAME), "w") as f:
    json.dump({"pid": holder, "host": socket.gethostname()}, f)
  refused(capsys, "a3-train", lambda: run(job(workdir, steps=STEPS + 1)),
          f"is in use by pid {holder}", workdir)


def test_an_unreadable_lock_is_not_taken_over(made, tmp_path, capsys):
  workdir = copy_of(made, "run", tmp_path)
  with open(os.path.join(workdir, rundir.LOCK_NAME), "w") as f:
    f.write('{"pid": 1')  # not what WorkdirLock writes (it creates the file whole)
  refused(capsys, "a3-train", lambda: run(job(workdir, steps=STEPS + 1)),
          "the lock file", workdir)


def test_resume_without_tokenizer_uses_the_runs_and_allow_change_restarts_the_data(
    made, tmp_path, capsys):
  """The run's saved tokenizer, not the default, when --tokenizer is not given again
  (the checkpoint's fingerprint must match it); --allow_change=batch_size resumes with a
  new batch size and the data stream afresh."""
  from a3_jax.train.loop import initial
  workdir = copy_of(made, "run", tmp_path)
  os.remove(os.path.join(workdir, "tokenizer.model"))
  saved = _word_tokenizer(workdir, 2048, sidecar='{"eos_token": "[EOS]"}')
  assert initial(job(workdir), None)[1].path == saved
  refused(capsys, "a3-train", lambda: run(job(workdir, steps=STEPS + 1)),
          "--tokenizer: the checkpoint in", workdir)
  workdir = copy_of(made, "run", tmp_path / "again")
  run(job(workdir, steps=STEPS + 1, batch_size=16, allow_change="batch_size"))
  err = capsys.readouterr().err
  assert "--allow_change: batch_size 8 -> 16; the data stream starts afresh" in err
  with open(os.path.join(workdir, "flags.json")) as f:
    assert json.load(f)["batch_size"] == 16


def test_a_bad_record_late_in_a_file_stops_the_run_naming_it(tmp_path, capsys):
  """Found by the pipeline after checkpoints were written: one line naming file and
  line, exit 2, and the last checkpoint intact (its checksums verify)."""
  import grain
  # 80 tokens a document: the first 256-row shuffle window (8192 tokens, 8 steps of 32
  # rows) holds the first 103 documents read; the bad one, read last, is in the second.
  lines = 122
  last = int(grain.MapDataset.range(lines).shuffle(seed=0)[lines - 1])
  data = tmp_path / "docs.jsonl"
  with open(data, "w") as f:
    for i in range(lines):
      text = "To be, or not to be, that is the question. " * 6
      f.write(json.dumps({"body" if i == last else "text": text}) + "\n")
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as exit_info, user_errors("a3-train"):
    run(job(workdir, steps=16, batch_size=32, save_every=4, data=f"text:{data}",
            eval_data="shakespeare", curriculum="ar:16"))
  lines_out = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert exit_info.value.code == 2
  assert lines_out[-1].startswith("a3-train: error: ") and len(lines_out) == 1, lines_out
  assert f"{data}, line {last + 1}: expected a JSON object" in lines_out[-1]
  params, _, step = restore_params(str(workdir))
  assert step == 8 and not (workdir / rundir.LOCK_NAME).exists()


def test_disk_full_during_a_save_is_one_line_and_keeps_the_last_checkpoint(
    made, tmp_path, capsys, monkeypatch):
  """ENOSPC inside orbax's commit thread (where the checksums are written): exit 2, one
  line, and a resume afterwards continues from the last complete step."""
  from a3_jax import checkpoint
  workdir = copy_of(made, "run", tmp_path)
  def disk_full(step_dir):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(checkpoint, "write_checksums", disk_full)
  line = refused(capsys, "a3-train", lambda: run(job(workdir, steps=STEPS + 1)),
                 "no space left on device while saving a checkpoint",
                 warning="warning: this run's learning-rate schedule")  # --steps grew
  assert f"(step {STEPS}) is intact" in line
  monkeypatch.undo()
  assert restore_params(workdir)[2] == STEPS


def test_a_finished_run_says_nothing_to_do_and_a_stale_lock_is_taken_over(made, tmp_path, capsys):
  workdir = copy_of(made, "run", tmp_path)
  before = digest(workdir)
  dead = subprocess.Popen(["true"])
  dead.wait()
  lock = os.path.join(workdir, rundir.LOCK_NAME)
  with open(lock, "w") as f:
    json.dump({"pid": dead.pid, "host": socket.gethostname()}, f)
  capsys.readouterr()
  assert run(job(workdir)) == {}
  out, err = capsys.readouterr()
  assert "nothing to do" in out and f"stale lock {lock} of pid {dead.pid}" in err
  assert not os.path.exists(lock) and digest(workdir) == before


@pytest.mark.parametrize("damage, what", [
    ("truncate", "is truncated"),
    ("flip", "does not match its checksum"),  # 64 bytes inverted, size unchanged
])
def test_damaged_latest_checkpoint_export_names_it_and_resume_falls_back(made, tmp_path, capsys,
                                                                        damage, what):
  workdir = copy_of(made, "run", tmp_path)
  with open(largest_file(os.path.join(workdir, "checkpoints", str(STEPS), "state")), "r+b") as f:
    if damage == "truncate":
      f.truncate(100)
      # and what a kill -9 during an older, non-atomic rewrite left: not an orphaned run
      open(os.path.join(workdir, "config.json"), "w").close()
    else:
      f.seek(os.fstat(f.fileno()).st_size // 2)
      flipped = bytes(b ^ 0xFF for b in f.read(64))
      f.seek(-len(flipped), os.SEEK_CUR)
      f.write(flipped)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 3, "lo')  # a crash mid-write
  line = refused(capsys, "a3-export", lambda: export_run(workdir, str(tmp_path / "out")),
                 f"checkpoint step {STEPS} in", workdir, tmp_path / "out")
  assert what in line and f"pass --step={STEPS - 1}" in line
  run(job(workdir, steps=STEPS + 1))
  err = capsys.readouterr().err
  assert f"checkpoint step {STEPS} in" in err and "is damaged" in err and what in err
  assert f"resuming from step {STEPS - 1}" in err and "dropped the torn last line" in err
  assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", str(STEPS)))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["d_model"] == 64
  losses = {r["step"]: r["loss"] for r in read_metrics(workdir) if "split" not in r}
  original = {r["step"]: r["loss"] for r in read_metrics(made["run"]) if "split" not in r}
  assert sorted(losses) == list(range(1, STEPS + 2))
  assert all(losses[s] == original[s] for s in original)  # the redone step is bit-identical


@pytest.mark.parametrize("name, damage, message", [
    ("meta/metadata", "empty", "file meta/metadata is empty"),
    ("data/process_0-of-1.json", "truncate", "file data/process_0-of-1.json is truncated"),
])
def test_every_checkpoint_damaged_is_refused_never_restarted(made, tmp_path, capsys, name,
                                                             damage, message):
  workdir = copy_of(made, "run", tmp_path)
  for path in glob.glob(os.path.join(workdir, "checkpoints", "*", name)):
    with open(path, "r+b") as f:
      f.truncate(0 if damage == "empty" else os.path.getsize(path) // 2)
  line = refused(capsys, "a3-train", lambda: run(job(workdir, steps=STEPS + 1)),
                 "every checkpoint in", workdir)
  assert f"step {STEPS}: {message}" in line and "step 1: " in line
  if name.startswith("meta"):  # export reads params and meta, not the data iterator
    refused(capsys, "a3-export", lambda: export_run(workdir, str(tmp_path / "out")),
            message, workdir, tmp_path / "out")


def test_a_bad_metrics_line_is_refused_and_plot_tolerates_a_torn_one(made, tmp_path, capsys):
  workdir = copy_of(made, "run", tmp_path)
  metrics = os.path.join(workdir, "metrics.jsonl")
  with open(metrics, "a") as f:
    f.write('{"step": 9, "loss": 1')  # torn
  png = plot_run(workdir, str(tmp_path / "curves.png"))
  assert os.path.getsize(png) > 0 and "dropped the torn last line" in capsys.readouterr().err
  with open(metrics, "a") as f:
    f.write('}\n{"loss": 2.0}\n')  # no step
  refused(capsys, "a3-plot", lambda: plot_run(workdir, str(tmp_path / "c2.png")),
          "line 5: not a metrics record", workdir)
  refused(capsys, "a3-train", lambda: run(job(workdir, steps=STEPS + 1)), "metrics.jsonl, line 5",
          workdir)
  with open(metrics, "wb") as f:
    f.write(b'{"step": 1}\n\xff\xfe\n')
  refused(capsys, "a3-plot", lambda: plot_run(workdir, str(tmp_path / "c3.png")),
          "metrics.jsonl is not UTF-8", workdir)
  refused(capsys, "a3-plot", lambda: plot_run(metrics), "is not a directory", workdir)


def test_non_finite_steps_are_never_applied_nor_checkpointed(tmp_path, capsys):
  workdir = tmp_path / "run"
  huge = TrainConfig(lr=1e30, warmup_steps=1)  # params ~1e30 after one step: inf/NaN next
  line = refused(capsys, "a3-train", lambda: run(job(workdir, steps=4, train=huge)),
                 "non-finite loss, gradient norm or updated params")
  assert line.split("error: step ")[1].split(":")[0] == "3" and "--skip_nonfinite" in line
  assert restore_params(str(workdir))[2] == 2
  run(job(workdir, steps=4, train=huge, skip_nonfinite=True))  # resumes at 2, skips 3 and 4
  records = [r for r in read_metrics(str(workdir)) if "split" not in r]
  assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["skipped_nonfinite"] == 2
  for step in (2, 4):
    params, _, saved = restore_params(str(workdir), step)
    assert saved == step
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_sigint_requests_a_save_like_sigterm():
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN where a shell started us in the background
  preemption = Preemption()
  try:
    assert signal.getsignal(signal.SIGINT) is not before
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.reached(1) and preemption.signal_name == "SIGINT"
  finally:
    preemption.restore()
  assert signal.getsignal(signal.SIGINT) is before


# a3-export, a3-eval, a3-generate: exports and checkpoints ----------------------------------


def test_export_refuses_bad_workdirs_and_outputs(made, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  out = tmp_path / "out"
  refused(capsys, "a3-export", lambda: export_run(str(empty), str(out)), "holds no checkpoints/",
          empty, out)
  refused(capsys, "a3-export", lambda: export_run(str(a_file), str(out)), "is a file", a_file, out)
  refused(capsys, "a3-export", lambda: export_run(made["run"], str(a_file)),
          "--out=", a_file, made["run"])
  refused(capsys, "a3-export", lambda: export_run(made["run"], made["export"]),
          "exists and is not empty", made["export"], made["run"])
  refused(capsys, "a3-export", lambda: export_run(made["run"], str(out), step=99),
          "--step=99: no such checkpoint", made["run"], out)


@pytest.mark.parametrize("damage, message", [
    ("params", "is damaged: params/"),
    ("config", "config.json is not a readable model config"),
])
def test_a_damaged_export_is_named_for_generate_and_eval(made, tmp_path, capsys, damage, message):
  export = copy_of(made, "export", tmp_path)
  if damage == "params":
    with open(largest_file(os.path.join(export, "params")), "r+b") as f:
      f.truncate(10)
  else:
    with open(os.path.join(export, "config.json"), "w") as f:
      f.write('{"d_model": ')
  line = refused(capsys, "a3-generate", lambda: load_model(export), message, export)
  assert "hf:" not in line


@pytest.mark.parametrize("prompt, message", [
    ("a <blank:999999999999> b", "more than the model's maximum of 256"),
    ("caf\udcc3 <blank:2>", "--prompt is not valid UTF-8"),
    ("a <blank:-1>", "malformed blank"),
])
def test_generate_refuses_bad_prompts(capsys, prompt, message):
  tokenizer = load_tokenizer()
  refused(capsys, "a3-generate", lambda: parse_prompt(prompt, tokenizer, 0, 256), message)


@pytest.mark.parametrize("sampler, message", [
    (dict(temperature=float("nan")), "--temperature must be a finite number"),
    (dict(temperature=float("inf")), "--temperature must be a finite number"),
    (dict(top_p=float("nan")), "--top_p must be in (0, 1]"),
    (dict(top_k=-1), "--top_k must be >= 0"),
])
def test_generate_refuses_non_finite_sampling_flags(capsys, sampler, message):
  refused(capsys, "a3-generate", lambda: SamplerConfig(**sampler), message)


def test_eval_names_bad_text_files(tmp_path, capsys):
  binary = tmp_path / "bad.txt"
  binary.write_bytes(b"\xff\xfe\x00 not text")
  refused(capsys, "a3-eval", lambda: read_texts(str(tmp_path)), "is a directory", tmp_path)
  refused(capsys, "a3-eval", lambda: read_texts(str(binary)), f"--text_file={binary} is not UTF-8")


# a3-convert, a3-plot -----------------------------------------------------------------------


def test_convert_names_a_truncated_safetensors_file_and_bad_outputs(made, tmp_path, capsys):
  hf = copy_of(made, "hf", tmp_path)
  weights = os.path.join(hf, "model.safetensors")
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) // 2)
  out = tmp_path / "out"
  refused(capsys, "a3-convert", lambda: convert_cli.main([f"--from=hf:{hf}", f"--out={out}"]),
          f"{weights} is not a readable safetensors file", hf, out)
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  refused(capsys, "a3-convert", lambda: convert_cli.main([f"--from=hf:{made['hf']}",
                                                          f"--out={a_file}"]),
          "is a file, not a directory", a_file, made["hf"])


@pytest.mark.parametrize("program, fmt", [("a3-export", "a3"), ("a3-export", "hf"),
                                          ("a3-convert", None)])
def test_disk_full_and_ctrl_c_while_writing_an_export_leave_nothing(made, tmp_path, capsys,
                                                                    monkeypatch, program, fmt):
  """ENOSPC (as tensorstore words it) mid-write: one line, exit 2; Ctrl-C: one line,
  exit 130; neither leaves OUT or OUT.partial; a stale OUT.partial is cleaned up."""
  from a3_jax import export
  from a3_jax.convert import hf_export
  out = tmp_path / "out"
  if program == "a3-export":
    write = lambda: export_run(made["run"], str(out), fmt=fmt)
  else:
    write = lambda: convert_cli.main([f"--from=hf:{made['hf']}", f"--out={out}"])
  real_copy = export.copy_tokenizer
  for failure, code in ((ValueError("OUT_OF_RANGE: write failed: No space left on device"), 2),
                        (KeyboardInterrupt(), 130)):
    def failing_copy(*args, failure=failure):
      real_copy(*args)
      raise failure
    monkeypatch.setattr(export, "copy_tokenizer", failing_copy)
    monkeypatch.setattr(hf_export, "copy_tokenizer", failing_copy)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info, user_errors(program):
      write()
    lines = [l for l in capsys.readouterr().err.splitlines()  # progress lines aside
             if l.strip() and not l.startswith(("reading weights:", "writing "))]
    assert exit_info.value.code == code and len(lines) == 1, lines
    assert ("no space left on device" if code == 2 else "interrupted") in lines[0]
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
  monkeypatch.undo()
  (tmp_path / "out.partial").mkdir()  # what a kill -9 leaves
  (tmp_path / "out.partial" / "config.json").write_text("{")
  write()
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_plot_refuses_an_unwritable_out(made, tmp_path, capsys):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  refused(capsys, "a3-plot", lambda: plot_run(made["run"], str(a_file / "curves.png")),
          "is not a writable directory", made["run"], a_file)


# Every console script's main, in-process ----------------------------------------------------


def _main_probes(made, tmp_path):
  binary = tmp_path / "binary.flags"
  binary.write_bytes(b"\x00\xff\xfe\x01")
  run_copy = copy_of(made, "run", tmp_path)
  workdir = str(tmp_path / "new_run")
  text_dir = str(tmp_path)
  return [
      ("a3-train", train_cli.main, [f"--workdir={workdir}", "--lr=nan"],
       "--lr must be a finite number > 0, got nan"),
      ("a3-train", train_cli.main, [f"--workdir={workdir}", "--max_to_keep=0"],
       "--max_to_keep must be >= 1"),
      ("a3-train", train_cli.main, [f"--workdir={made['export']}", "--preset=tiny"],
       "holds an a3_jax export"),
      ("a3-dry-run", dry_run_cli.main, [f"--flagfile={binary}"], "--flagfile is not a text file"),
      ("a3-dry-run", dry_run_cli.main, ["--flagfile=/nonexistent.flags"],
       "Unable to open flagfile"),
      ("a3-dry-run", dry_run_cli.main, ["--preset=tiny", "--mesh=data:abc"],
       "malformed --mesh=data:abc"),
      ("a3-dry-run", dry_run_cli.main, ["--preset=tiny", "--mesh=data:0"],
       "malformed --mesh=data:0"),
      ("a3-export", export_cli.main, [f"--workdir={run_copy}/metrics.jsonl", f"--out={workdir}"],
       "is a file, not a training run directory"),
      ("a3-export", export_cli.main, [f"--workdir={run_copy}", f"--out={made['export']}"],
       "exists and is not empty"),
      ("a3-plot", plot_cli.main, [f"{run_copy}/metrics.jsonl"], "is not a directory"),
      ("a3-convert", convert_cli.main, [f"--from=hf:{made['hf']}", f"--out={run_copy}"],
       "exists and is not empty"),
      ("a3-generate", generate_cli.main, [f"--checkpoint={made['export']}", "--prompt=a <blank:2>",
                                          "--temperature=nan"], "--temperature must be a finite"),
      ("a3-generate", generate_cli.main, [f"--checkpoint={made['export']}",
                                          "--prompt=a <blank:999999999999>"],
       "more than the model's maximum"),
      ("a3-generate", generate_cli.main, [f"--checkpoint={made['export']}",
                                          "--prompt=caf\udcc3 <blank:2>"],
       "--prompt is not valid UTF-8"),
      ("a3-eval", eval_cli.main, [f"--checkpoint={made['export']}", f"--text_file={text_dir}"],
       "is a directory, not a text file"),
      ("a3-eval", eval_cli.main, [f"--checkpoint={made['export']}", f"--text_file={text_dir}",
                                  "--context=-1"], "--context must be >= 0, got -1"),
      ("a3-train", train_cli.main, [f"--workdir={workdir}", "--steps=-5"],
       "--steps must be >= 1, got -5"),
  ]


def assert_mains_refuse(probes, watched, capsys):
  """Each (program, main, argv, message): exit 2, one line naming `message`, and every
  path in `watched` byte-identical."""
  for program, main, argv, message in probes:
    before = [digest(p) for p in watched]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
      main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert exit_info.value.code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), (argv, err)
    assert message in lines[0], (argv, lines[0])
    assert [digest(p) for p in watched] == before, argv


def test_every_console_script_main_refuses_in_one_line(made, tmp_path, capsys):
  assert_mains_refuse(_main_probes(made, tmp_path),
                      [made["run"], made["export"], made["hf"], str(tmp_path)], capsys)


def _word_tokenizer(directory, size: int, sidecar: str | None = None) -> str:
  """A word-level tokenizer.json of `size` ids (its sidecar, if given, as raw text)."""
  import tokenizers
  os.makedirs(directory, exist_ok=True)
  vocab = {"[UNK]": 0, "[EOS]": 1, **{f"w{i}": i for i in range(2, size)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  path = os.path.join(directory, "tokenizer.json")
  tok.save(path)
  if sidecar is not None:
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      f.write(sidecar)
  return path


def _hf_with(made, tmp_path, name, edit=None, raw: bytes | None = None, tokenizer=None) -> str:
  """A copy of the HF export with its config.json edited (or replaced by raw bytes),
  or its tokenizer replaced by the tokenizer.json `tokenizer`."""
  hf = str(tmp_path / name)
  shutil.copytree(made["hf"], hf)
  config_path = os.path.join(hf, "config.json")
  if edit is not None:
    with open(config_path) as f:
      config = json.load(f)
    edit(config)
    with open(config_path, "w") as f:
      json.dump(config, f)
  if raw is not None:
    with open(config_path, "wb") as f:
      f.write(raw)
  if tokenizer is not None:
    for old in glob.glob(os.path.join(hf, "tokenizer*")):
      os.remove(old)
    shutil.copy(tokenizer, os.path.join(hf, "tokenizer.json"))
  return hf


def _zero_head_gguf(path) -> str:
  import gguf
  w = gguf.GGUFWriter(str(path), "llama")
  for add, value in (("add_block_count", 1), ("add_embedding_length", 64),
                     ("add_feed_forward_length", 128), ("add_head_count", 0),
                     ("add_vocab_size", 256)):
    getattr(w, add)(value)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def _round2_probes(made, tmp_path):
  """(program, main, argv, message) of the issue-23 probes; each once ended in a
  traceback, a hang, or a silently wrong exit 0 (see `before` in ROUND2_TABLE)."""
  workdir = str(tmp_path / "new_run")
  out = str(tmp_path / "out")
  no_eos = _word_tokenizer(tmp_path / "no_eos", 300)
  bad_sidecar = _word_tokenizer(tmp_path / "bad_sidecar", 300, sidecar="{not json")
  big = _word_tokenizer(tmp_path / "big", 3000, sidecar='{"eos_token": "[EOS]"}')
  other_2048 = _word_tokenizer(tmp_path / "other", 2048, sidecar='{"eos_token": "[EOS]"}')
  def no_head_dim(c, heads=0):
    c.pop("head_dim", None)
    c["num_attention_heads"] = heads
  zero_heads = _hf_with(made, tmp_path, "zero_heads", edit=no_head_dim)
  latin1 = _hf_with(made, tmp_path, "latin1", raw=b'{"model_type": "llama", "name": "caf\xe9"}')
  no_factor = _hf_with(made, tmp_path, "no_factor", edit=lambda c: c.update(
      rope_scaling={"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64}))
  big_tok_hf = _hf_with(made, tmp_path, "big_tok", tokenizer=big)
  gguf_file = _zero_head_gguf(tmp_path / "zero_heads.gguf")
  tiny = ["--preset=tiny", "--steps=1", "--batch_size=8", "--seq_len=32"]
  text = tmp_path / "text.txt"
  text.write_text("To be or not to be.\n")
  train = ("a3-train", train_cli.main)
  (tmp_path / "good.jsonl").write_text('{"text": "To be or not to be."}\n')
  no_text = tmp_path / "no_text.jsonl"
  no_text.write_text('\n{"body": "To be or not to be."}\n')
  no_tokenizer = str(tmp_path / "export_without_tokenizer")
  shutil.copytree(made["export"], no_tokenizer)
  for name in glob.glob(os.path.join(no_tokenizer, "tokenizer*")):
    os.remove(name)
  return [
      (*train, [f"--workdir={workdir}", *tiny, "--lr=1e39"],
       "--lr must be a finite number > 0, got 1e+39 (infinite in float32)"),
      (*train, [f"--workdir={workdir}", *tiny, "--curriculum=mix:ar=nan,perm:4=1:4"],
       "mixture item 'ar=nan'"),
      (*train, [f"--workdir={workdir}", *tiny, "--seq_len=64", "--curriculum=block:1000:4"],
       "--curriculum stage 'block:1000': groups of 1000 tokens cover a whole row"),
      ("a3-dry-run", dry_run_cli.main, ["--preset=tiny", "--seq_len=64",
                                        "--curriculum=block:1000:4"],
       "--curriculum stage 'block:1000': groups of 1000 tokens cover a whole row"),
      (*train, [f"--workdir={workdir}", *tiny, f"--init_from={no_tokenizer}"],
       f"--init_from={no_tokenizer} holds no tokenizer file: pass --tokenizer"),
      (*train, [f"--workdir={made['run']}", *tiny, f"--steps={STEPS + 1}", "--batch_size=16"],
       "--batch_size: the checkpoint in"),
      (*train, [f"--workdir={made['run']}", *tiny, f"--steps={STEPS + 1}", "--seq_len=16"],
       "--seq_len: the checkpoint in"),
      (*train, [f"--workdir={made['run']}", *tiny, f"--steps={STEPS + 1}",
                f"--data=text:{tmp_path}/good.jsonl"], "--data: the checkpoint in"),
      (*train, [f"--workdir={made['run']}", *tiny, f"--steps={STEPS + 1}",
                f"--tokenizer={other_2048}"], "--tokenizer: the checkpoint in"),
      (*train, [f"--workdir={made['run']}", *tiny, "--allow_change=tokenizer"],
       "--allow_change=tokenizer: 'tokenizer' is not one of"),
      (*train, [f"--workdir={workdir}", *tiny, f"--data=text:{tmp_path}/*.jsonl"],
       f"{no_text}, line 2: expected a JSON object with a string 'text' field"),
      (*train, [f"--workdir={workdir}", *tiny, "--model=rms_eps=nan"],
       "--model=rms_eps=nan: invalid ModelConfig: rms_eps must be a number > 0"),
      (*train, [f"--workdir={workdir}", *tiny, "--model=attention=chunked",
                "--model=attention_chunk=0"], "attention_chunk must be >= 1, got 0"),
      (*train, [f"--workdir={workdir}", *tiny, "--model=rms_eps=1e39"],
       "rms_eps must be a number > 0 (finite in float32), got 1e+39"),
      (*train, [f"--workdir={workdir}", *tiny, f"--tokenizer={bad_sidecar}"],
       "tokenizer_config.json is damaged or not JSON"),
      (*train, [f"--workdir={workdir}", *tiny, f"--tokenizer={no_eos}"],
       f"tokenizer {no_eos} has no EOS token"),
      (*train, ["--workdir=gs://a3-no-bucket/run", *tiny], "--workdir=gs://a3-no-bucket/run: "),
      ("a3-convert", convert_cli.main, [f"--from=hf:{zero_heads}", f"--out={out}"],
       "num_attention_heads must be >= 1, got 0"),
      ("a3-dry-run", dry_run_cli.main, ["--preset=tiny", f"--init_from=hf:{zero_heads}"],
       "num_attention_heads must be >= 1, got 0"),
      ("a3-convert", convert_cli.main, [f"--from=gguf:{gguf_file}", f"--out={out}"],
       "llama.attention.head_count (0)"),
      ("a3-dry-run", dry_run_cli.main, ["--preset=tiny", f"--init_from=gguf:{gguf_file}"],
       "llama.attention.head_count (0)"),
      ("a3-convert", convert_cli.main, [f"--from=hf:{latin1}", f"--out={out}"],
       "config.json is not UTF-8 text"),
      ("a3-convert", convert_cli.main, [f"--from=hf:{no_factor}", f"--out={out}"],
       "llama3 rope_scaling lacks ['factor']"),
      ("a3-convert", convert_cli.main, [f"--from=hf:{big_tok_hf}", f"--out={out}"],
       "has 3000 ids but model hf:"),
      ("a3-eval", eval_cli.main, [f"--checkpoint=hf:{big_tok_hf}", f"--text_file={text}"],
       "has 3000 ids but model hf:"),
      ("a3-eval", eval_cli.main, [f"--checkpoint={made['export']}", f"--tokenizer={big}",
                                  f"--text_file={text}"], "has 3000 ids but model"),
      ("a3-generate", generate_cli.main, [f"--checkpoint={made['export']}", f"--tokenizer={big}",
                                          "--prompt=a <blank:2>"], "has 3000 ids but model"),
      ("a3-eval", eval_cli.main, [f"--checkpoint={made['export']}", f"--text_file={text}",
                                  "--curve", "--curve_png=/no/such/dir/x.png"],
       "--curve_png=/no/such/dir/x.png: directory /no/such/dir does not exist"),
  ]


# probe: (before this round, after)
ROUND2_TABLE = {
    "--model=rms_eps=nan": ("accepted; NaN at step 1, workdir written", "exit 2, one line"),
    "--model=attention_chunk=0": ("traceback", "exit 2, one line"),
    "--model=rms_eps=1e39": ("accepted; inf in float32", "exit 2, one line"),
    "tokenizer_config.json not JSON": ("traceback (a3-train, a3-convert)", "exit 2, one line"),
    "tokenizer without EOS": ("named as <JsonTokenizer object at 0x...>", "named by its path"),
    "--workdir=gs:// without gcsfs": ("traceback (ImportError)", "exit 2, one line"),
    "zero heads, HF config without head_dim": ("traceback (ZeroDivisionError)", "exit 2"),
    "zero heads in a3-dry-run --init_from": ("traceback", "exit 2, one line"),
    "zero heads in a GGUF": ("traceback (ZeroDivisionError)", "exit 2, one line"),
    "HF config.json not UTF-8": ("traceback (UnicodeDecodeError)", "exit 2, one line"),
    "llama3 rope_scaling without factor": ("traceback (KeyError)", "exit 2, one line"),
    "3000-id tokenizer, 2048-id model": ("exit 0, prints nan (a3-eval); a3-convert accepts",
                                        "exit 2 in a3-eval, a3-generate, a3-convert"),
    "--curve_png=/no/such/dir/x.png": ("traceback after 30 s of work", "exit 2 before loading"),
    "--lr=1e39": ("exit 0; lr NaN, checkpoint 1 all NaN", "exit 2, one line, nothing written"),
    "--curriculum=mix:ar=nan,perm:4=1:4": ("traceback after the workdir was written",
                                           "exit 2, one line, nothing written"),
    "--seq_len=64 --curriculum=block:1000:4": ("exit 0, a unigram model (a3-train, a3-dry-run)",
                                               "exit 2, one line"),
    "--init_from=EXPORT without a tokenizer file": ("traceback", "exit 2, one line"),
    "resume with another --batch_size / --seq_len / --data": (
        "exit 0, no word, flags.json rewritten",
        "exit 2 naming the flag and both values (--allow_change= to change on purpose)"),
    "resume with another --tokenizer of the same size": (
        "exit 0, trains on it", "exit 2 naming --tokenizer and both fingerprints"),
    "--data=text:*.jsonl, a file whose lines lack text": (
        "refused after config.json, flags.json, tokenizer, metrics, tensorboard/, checkpoints/",
        "refused before any write, naming file and line"),
}


def test_round2_probes_refuse_in_one_line(made, tmp_path, capsys):
  assert_mains_refuse(_round2_probes(made, tmp_path),
                      [made["run"], made["export"], made["hf"], str(tmp_path)], capsys)


@pytest.mark.parametrize("argv, message", [
    (["--devices=0"], "--devices must be >= 1, got 0"),
    (["--devices=-3"], "--devices must be >= 1, got -3"),
    (["--mesh=data:abc"], "malformed --mesh=data:abc"),
    (["--mesh=data:0"], "malformed --mesh=data:0"),
    (["--mesh=data:10000"], "must be divisible by data*fsdp (10000)"),  # before 10,000 devices
    (["--lr=inf"], "--lr must be a finite number > 0, got inf"),
])
def test_dry_run_refuses_a_bad_mesh_before_the_backend_starts(capsys, argv, message):
  refused(capsys, "a3-dry-run", lambda: dry_run_cli._device_count(["a3-dry-run", *argv]), message)


# Signals and crashes, end to end (subprocesses; slow) --------------------------------------

TINY_FLAGS = ["--preset=tiny", "--batch_size=4", "--seq_len=32", "--eval_batches=1",
              "--curriculum=ar:2,block:2:2,perm:4:4", "--warmup_steps=2", "--eval_every=100"]


def _train_cmd(workdir, *extra):
  return [sys.executable, "-m", "a3_jax.cli.train", f"--workdir={workdir}", *TINY_FLAGS, *extra]


def _losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if "split" not in r}


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
  import time
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_train_cmd(workdir, "--steps=100000", "--save_every=100000"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=subprocess_env())
  deadline = time.time() + 300
  while len(_losses(workdir)) < 2:
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0 and "Traceback" not in out, out[-2000:]
  assert "SIGINT: saved step" in out
  assert restore_params(str(workdir))[2] >= 2 and not (workdir / rundir.LOCK_NAME).exists()


def _first_save_seen(workdir, proc, deadline):
  """Waits until the run starts its first checkpoint (a step or orbax temp directory)."""
  import time
  checkpoints = workdir / "checkpoints"
  while not (checkpoints.is_dir() and any(checkpoints.iterdir())):
    if proc.poll() is not None or time.time() > deadline:
      return False
    time.sleep(0.01)
  return True


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_bit_identical(tmp_path):
  """A3_KILL_RUNS runs (default 3), each SIGKILLed at a random moment between its first
  and its last checkpoint (one every step: often mid-save), then resumed to the end: every resume starts from an intact step and ends with the losses and params of
  an uninterrupted run."""
  import random
  import time
  runs, steps = int(os.environ.get("A3_KILL_RUNS", "3")), 8
  flags = [f"--steps={steps}", "--save_every=1"]
  straight = tmp_path / "straight"
  proc = subprocess.Popen(_train_cmd(straight, *flags), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=subprocess_env())
  assert _first_save_seen(straight, proc, time.time() + 600)
  first = time.time()
  while not (straight / "checkpoints" / str(steps)).exists() and proc.poll() is None:
    time.sleep(0.01)
  span = time.time() - first  # from the first save to the last one
  assert proc.wait(timeout=600) == 0
  expected_params = restore_params(str(straight))[0]
  rng = random.Random(0)
  outcomes = []
  for i in range(runs):
    workdir = tmp_path / f"killed{i}"
    proc = subprocess.Popen(_train_cmd(workdir, *flags), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=subprocess_env())
    _first_save_seen(workdir, proc, time.time() + 600)
    time.sleep(rng.uniform(0.0, 1.0) * span)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    entries = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    resumed = subprocess.run(_train_cmd(workdir, *flags), capture_output=True, text=True,
                             env=subprocess_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    start = next((l.split()[3] for l in resumed.stdout.splitlines()
                  if l.startswith("resumed from step")), None)
    outcomes.append({"run": i, "killed_while_running": alive, "checkpoints_at_kill": entries,
                     "resumed_from": "nothing to do" if "nothing to do" in resumed.stdout
                     else int(start or 0), "damaged": "is damaged" in resumed.stderr})
    assert _losses(workdir) == _losses(straight), f"run {i}: {resumed.stdout[-2000:]}"
    params = restore_params(str(workdir))[0]
    same = jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                        params, expected_params)
    assert all(jax.tree.leaves(same)), f"run {i}: params differ"
  print(json.dumps({"kill_9_runs": outcomes}))
