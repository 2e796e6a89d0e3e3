"""Multi-process runs: start-up settings, and 2 processes x 4 devices == 1 process x 8."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest

from a3_jax import distributed as dist
from a3_jax.train import config, loop
from a3_jax.checkpoint import restore_params
from a3_jax.data import pipeline
from a3_jax.metrics import read_metrics

# 4 steps cross a stage boundary, so both a fixed (ar) and a sampled (perm:4)
# grouping run on the assembled global batch.
JOB = dict(preset="tiny", steps=4, batch_size=16, seq_len=32, curriculum="ar:2,perm:4:2",
           eval_batches=1, eval_every=100, save_every=100)
WARMUP = 2
# The two runs differ only in where gradients are summed: gloo across processes
# vs. in one process. That reorders fp32 sums (1 ulp, ~1e-7 relative, seen here);
# 1e-5 leaves room for 4 Adam steps, while a wrong row order or a wrong data
# shard moves the loss by > 1e-3.
RTOL = 1e-5


def test_flags_win_over_environment():
  env = {"A3_COORDINATOR": "10.0.0.1:1234", "A3_NUM_PROCESSES": "4", "A3_PROCESS_ID": "3",
         "A3_LOCAL_DEVICE_IDS": "0,1"}
  s = dist.settings_from({"process_id": 2, "coordinator_address": None}, env)
  assert s == dist.Settings("10.0.0.1:1234", 4, 2, (0, 1))
  assert dist.mode(s, {}) == "explicit"
  assert dist.settings_from({"local_device_ids": ["3"]}, {}).local_device_ids == (3,)


@pytest.mark.parametrize("values, message", [
    ({"num_processes": 2}, "also need --coordinator_address, --process_id"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, "not in [0, 2)"),
    ({"coordinator_address": "h", "num_processes": 2, "process_id": 0}, "expected HOST:PORT"),
    ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0}, "must be >= 1"),
    ({"local_device_ids": ["0"]}, "--local_device_ids needs"),
    ({"num_processes": "two"}, "expected an integer"),
])
def test_incomplete_or_bad_settings_are_user_errors(values, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
    dist.mode(dist.settings_from(values, {}), {})


def test_mode_from_the_environment():
  step = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu[1-2]", "SLURM_NTASKS": "8",
          "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
  none = dist.Settings()
  assert dist.mode(none, step) == "slurm"
  assert dist.mode(none, dict(step, SLURM_NTASKS="1")) == "single"
  batch_script = {k: v for k, v in step.items() if k != "SLURM_STEP_NODELIST"}
  assert dist.mode(none, batch_script) == ("tpu" if dist.on_tpu_vm() else "single")
  assert dist.mode(dist.Settings(num_processes=1), step) == "single"
  assert dist.mode(dist.Settings("h:1", 1, 0), {}) == "single"


@pytest.mark.skipif(dist.on_tpu_vm(), reason="a TPU VM initializes")
def test_single_host_initializes_nothing(monkeypatch):
  for name in [*dist.ENV.values(), *dist.SLURM_STEP_VARS]:
    monkeypatch.delenv(name, raising=False)
  assert dist.initialize_from_flags() == "single"
  assert not jax.distributed.is_initialized()


def test_a3_train_reports_incomplete_settings_in_one_line():
  env = dict(os.environ, A3_NUM_PROCESSES="2")
  proc = subprocess.run([sys.executable, "-m", "a3_jax.cli.train", "--process_id=1"], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "a3-train: error: multi-process settings ['num_processes', 'process_id'] also need "
      "--coordinator_address"]


class _Hosts(grain.DatasetIterator):
  """The per-process iterators of a run, their batches stacked in process order."""

  def __init__(self, iterators):
    super().__init__(list(iterators))

  def __next__(self):
    batches = [next(it) for it in self._parents]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def get_state(self):
    return {"hosts": [it.get_state() for it in self._parents]}

  def set_state(self, state):
    for it, s in zip(self._parents, state["hosts"]):
      it.set_state(s)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two_processes(workdir, tmp_path, **overrides):
  """`python -m a3_jax.cli.train` as processes 0 and 1 of one run, 4 CPU devices each."""
  flags = [f"--{k}={v}" for k, v in {**JOB, **overrides}.items()] + [f"--warmup_steps={WARMUP}"]
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", A3_NUM_PROCESSES="2",
             A3_COORDINATOR=f"127.0.0.1:{_free_port()}",
             JAX_COMPILATION_CACHE_DIR=os.environ.get(
                 "A3_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")))
  env.pop("XLA_FLAGS", None)  # the device count is JAX_NUM_CPU_DEVICES
  procs = []
  for i in range(2):
    with open(tmp_path / f"process_{i}.log", "w") as log:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "a3_jax.cli.train", f"--workdir={workdir}", *flags],
          env=dict(env, A3_PROCESS_ID=str(i)), stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait_for(procs, tmp_path, timeout):
  """Both exit 0 within `timeout` seconds (a hung collective would not)."""
  try:
    for proc in procs:
      proc.wait(timeout=timeout)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for i, proc in enumerate(procs):
    log = (tmp_path / f"process_{i}.log").read_text()
    assert proc.returncode == 0, f"process {i} exited {proc.returncode}:\n{log[-3000:]}"


def _one_process_run(workdir, monkeypatch):
  """1 process x 8 devices, reading what the two processes read."""
  def both_shards(spec, tokenizer, *, batch_size, **kw):
    return _Hosts(pipeline.make_train_iterator(spec, tokenizer, batch_size=batch_size // 2,
                                               shard_index=i, shard_count=2, **kw)
                  for i in range(2))
  monkeypatch.setattr(loop, "make_train_iterator", both_shards)
  train = dataclasses.replace(config.Job().train, warmup_steps=WARMUP,
                              total_steps=JOB["steps"])  # a3-train's flag defaults
  loop.run(config.Job(workdir=str(workdir), **JOB, train=train))


def _by_split(workdir):
  records = read_metrics(str(workdir))
  train = [r for r in records if "split" not in r]
  return train, [r for r in records if r.get("split") == "validation"]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, monkeypatch):
  assert len(jax.devices()) == 8
  two, one = tmp_path / "two", tmp_path / "one"
  _wait_for(_start_two_processes(two, tmp_path), tmp_path, timeout=500)
  _one_process_run(one, monkeypatch)

  (train2, eval2), (train1, eval1) = _by_split(two), _by_split(one)
  assert [r["step"] for r in train2] == [1, 2, 3, 4]  # only process 0 writes metrics
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose([r[name] for r in train2], [r[name] for r in train1], rtol=RTOL)
  assert len(eval2) == len(eval1) == 1
  # per character too: the characters are counted over the global batch on every process
  for name in ("nll_ar", "nll_perm4", "nll_ar_per_char", "nll_perm4_per_char", "eval_tokens"):
    np.testing.assert_allclose(eval2[0][name], eval1[0][name], rtol=RTOL)

  # Each process saved its own data-iterator state: the shard it read.
  data2 = two / "checkpoints" / "4" / "data"
  hosts = json.loads((one / "checkpoints" / "4" / "data" / "process_0-of-1.json").read_text())
  for i in range(2):
    assert json.loads((data2 / f"process_{i}-of-2.json").read_text()) == hosts["hosts"][i]

  # The parameters both processes wrote restore here into one process's arrays.
  params2, _, step2 = restore_params(str(two))
  params1, _, _ = restore_params(str(one))
  assert step2 == 4
  # Adam divides each gradient by its own running RMS, so a ~1e-7 relative difference in
  # the cross-process sum of a near-zero gradient can move that parameter by up to
  # ~1e-4 * lr; atol = 1e-3 * lr (lr 1e-3 here) bounds that, far below a wrong shard's effect.
  atol = 1e-3 * config.Job().train.lr
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=RTOL, atol=atol), params2, params1)


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path):
  workdir = tmp_path / "run"
  procs = _start_two_processes(workdir, tmp_path, steps=100000, save_every=100000,
                               eval_every=100000)
  deadline = time.time() + 400
  while len(read_metrics(str(workdir))) < 3:
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # a preemption notice may reach one host only
  _wait_for(procs, tmp_path, timeout=120)
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(steps) == 1 and steps[0] >= 3
  data = workdir / "checkpoints" / str(steps[0]) / "data"
  assert sorted(p.name for p in data.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  for i in range(2):
    assert f"SIGTERM: saved step {steps[0]}, exiting" in (tmp_path / f"process_{i}.log").read_text()
