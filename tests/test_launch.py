"""The launchers: dry runs print well-formed commands, and real runs run exactly those.

gcloud, python3 (for the wheel build), scontrol, srun and a3-train are stand-ins
on PATH that log their arguments, so nothing leaves this machine.
"""

import json
import os
import shlex
import stat
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM = os.path.join(ROOT, "launch", "gpu_slurm.sbatch")
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
  WHEEL = f"a3_jax-{tomllib.load(f)['project']['version']}-py3-none-any.whl"
EXTRA = ["--steps=10", "--curriculum=it's ar:5"]  # a quote and a space survive both launchers

LOGGER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["A3_TEST_LOG"], "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
"""
FAKES = {
    # describe answers with A3_TEST_TPU_STATE (none: the slice does not exist)
    "gcloud": LOGGER + """
if "describe" in sys.argv:
  state = os.environ.get("A3_TEST_TPU_STATE")
  print(state or "", end="")
  sys.exit(0 if state else 1)
""",
    "python3": LOGGER + """
if sys.argv[1:4] == ["-m", "pip", "wheel"]:
  out = sys.argv[sys.argv.index("--wheel-dir") + 1]
  os.makedirs(out, exist_ok=True)
  open(os.path.join(out, os.environ["A3_TEST_WHEEL"]), "w").close()
""",
    "scontrol": LOGGER + 'print("gpu07\\ngpu08")\n',
    # srun runs its command once per task, as SLURM would on the nodes
    "srun": LOGGER + """
import subprocess
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:5])
per_node = int(opts["ntasks-per-node"])
command = sys.argv[5:]
for rank in range(int(opts["ntasks"])):
  env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node))
  subprocess.run(command, env=env, check=True)
""",
    "a3-train": LOGGER,
}


@pytest.fixture
def fake_env(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in FAKES.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(stat.S_IRWXU)
  flagfile = tmp_path / "run.flags"
  flagfile.write_text("--preset=llama3.2-1b\n--workdir=gs://bucket/runs/1b\n")
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
         "A3_TEST_LOG": str(tmp_path / "calls.jsonl"), "A3_TEST_WHEEL": WHEEL}
  return env, flagfile


def _run(script, args, env, check=True):
  proc = subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True,
                        timeout=60)
  if check and proc.returncode:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr}")
  return proc


def _commands(stdout):
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def _calls(env):
  path = env["A3_TEST_LOG"]
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def _opt(command, name):
  values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, command)
  return values[0]


TPU_ARGS = ["--name=a3-v5p", "--zone=us-east5-a", "--accelerator_type=v5p-64", "--spot"]


def test_tpu_dry_run_prints_the_commands_and_runs_none(fake_env):
  env, flagfile = fake_env
  out = _run(TPU, [*TPU_ARGS, f"--flagfile={flagfile}", "--dry_run", "--", *EXTRA], env).stdout
  assert _calls(env) == []
  describe, create, clean, wheel, pack, scp, install, train = _commands(out)
  assert describe[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"]
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "a3-v5p"]
  assert _opt(create, "accelerator-type") == "v5p-64"
  assert _opt(create, "version") == "v2-alpha-tpuv5" and "--spot" in create
  assert clean[:2] == ["rm", "-rf"] and wheel[:4] == ["python3", "-m", "pip", "wheel"]
  wheel_dir = wheel[wheel.index("--wheel-dir") + 1]
  tgz = os.path.join(wheel_dir, "a3-flags.tgz")
  assert pack == ["tar", "-czf", tgz, "-C", str(flagfile.parent), flagfile.name]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5:8] == [os.path.join(wheel_dir, WHEEL), tgz, "a3-v5p:"]
  for command in (scp, install, train):  # every worker of the slice, in its zone
    assert _opt(command, "worker") == "all" and _opt(command, "zone") == "us-east5-a"
  assert _opt(install, "command").startswith("tar -xzf a3-flags.tgz && ")
  assert f"'jax[tpu]' './{WHEEL}[gcs]'" in _opt(install, "command")  # gcsfs for gs://
  assert shlex.split(_opt(train, "command")) == [
      "a3-venv/bin/a3-train", "--flagfile=run.flags", *EXTRA]


def test_tpu_run_executes_what_the_dry_run_prints(fake_env):
  env, flagfile = fake_env
  args = [*TPU_ARGS, f"--flagfile={flagfile}", "--", *EXTRA]
  printed = _commands(_run(TPU, ["--dry_run", *args], env).stdout)
  _run(TPU, args, env)  # no slice yet: describe fails, create runs
  ran = _calls(env)
  assert ran == [c for c in printed if c[0] in ("gcloud", "python3")]
  os.remove(env["A3_TEST_LOG"])
  _run(TPU, args, dict(env, A3_TEST_TPU_STATE="READY"))  # reused
  assert [c for c in _calls(env) if "create" in c] == []
  assert len(_calls(env)) == len(ran) - 1


def test_tpu_run_on_every_worker_parses_the_extra_flags(fake_env, tmp_path):
  env, flagfile = fake_env
  out = _run(TPU, [*TPU_ARGS, f"--flagfile={flagfile}", "--dry_run", "--", *EXTRA], env).stdout
  command = _opt(_commands(out)[-1], "command")
  venv = tmp_path / "a3-venv" / "bin"
  venv.mkdir(parents=True)
  (venv / "a3-train").symlink_to(tmp_path / "bin" / "a3-train")
  subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, check=True)  # what ssh runs
  assert _calls(env) == [["a3-train", "--flagfile=run.flags", *EXTRA]]


def test_tpu_workers_get_every_included_flag_file(fake_env, tmp_path):
  env, _ = fake_env
  launch_dir = tmp_path / "checkout"
  (launch_dir / "experiments" / "paper").mkdir(parents=True)
  (launch_dir / "experiments" / "base.flags").write_text("--seq_len=64\n")
  (launch_dir / "experiments" / "paper" / "common.flags").write_text(
      "--flagfile=experiments/base.flags\n--steps=7\n")
  (launch_dir / "experiments" / "paper" / "run.flags").write_text(
      "# a comment\n--flagfile=experiments/paper/common.flags\n--preset=tiny\n"
      "-flagfile=experiments/base.flags\n")
  args = [*TPU_ARGS, "--flagfile=experiments/paper/run.flags", "--dry_run"]
  proc = subprocess.run(["bash", TPU, *args], env=env, cwd=launch_dir, capture_output=True,
                        text=True, timeout=60, check=True)
  pack = next(c for c in _commands(proc.stdout) if c[0] == "tar")
  assert pack[pack.index("-C", 4):] == ["-C", str(launch_dir), "experiments/paper/common.flags",
                                        "experiments/base.flags"]
  os.makedirs(os.path.dirname(pack[2]), exist_ok=True)  # (pip wheel makes it)
  subprocess.run(pack, cwd=launch_dir, check=True)  # what the launcher runs, then a worker:
  home = tmp_path / "worker"
  home.mkdir()
  subprocess.run(["tar", "-xzf", pack[2]], cwd=home, check=True)
  from a3_jax.cli import train
  train.F.unparse_flags()
  cwd = os.getcwd()
  try:
    os.chdir(home)
    train.F(["a3-train", "--flagfile=run.flags"])
    assert (train.F.preset, train.F.steps, train.F.seq_len) == ("tiny", 7, 64)
  finally:
    os.chdir(cwd)
    train.F.unparse_flags()


@pytest.mark.parametrize("include, message", [
    ("/abs/common.flags", "includes /abs/common.flags: name it relative"),
    ("missing.flags", "includes missing.flags: no such file"),
])
def test_tpu_refuses_an_include_a_worker_cannot_get(fake_env, include, message):
  env, flagfile = fake_env
  flagfile.write_text(f"--flagfile={include}\n")
  proc = _run(TPU, [*TPU_ARGS, f"--flagfile={flagfile}", "--dry_run"], env, check=False)
  assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--name=a", "--zone=z"], "are required"),
    (["--name=a", "--zone=z", "--accelerator_type=v9-8", "--flagfile={flagfile}"], "pass --version"),
    (["--name=a", "--zone=z", "--accelerator_type=v4-8", "--flagfile=missing.flags"], "no such"),
    (["--bogus"], "unknown argument --bogus"),
])
def test_tpu_bad_arguments(fake_env, args, message):
  env, flagfile = fake_env
  proc = _run(TPU, [a.format(flagfile=flagfile) for a in args] + ["--dry_run"], env, check=False)
  assert proc.returncode == 2 and message in proc.stderr


def test_tpu_refuses_a_slice_that_is_not_ready(fake_env):
  env, flagfile = fake_env
  proc = _run(TPU, [*TPU_ARGS, f"--flagfile={flagfile}"],
              dict(env, A3_TEST_TPU_STATE="CREATING"), check=False)
  assert proc.returncode == 2 and "is CREATING" in proc.stderr
  assert [c[4] for c in _calls(env)] == ["describe"]


def _slurm_env(env, nodes, tasks, gpus=8):
  return dict(env, SLURM_JOB_ID="12345", SLURM_JOB_NODELIST="gpu[07-08]",
              SLURM_JOB_NUM_NODES=str(nodes), SLURM_NTASKS=str(tasks),
              SLURM_GPUS_ON_NODE=str(gpus))


@pytest.mark.parametrize("tasks", [16, 2])  # one process per GPU, one per node
def test_slurm_dry_run_prints_one_srun(fake_env, tasks):
  env, flagfile = fake_env
  env = _slurm_env(env, 2, tasks)
  out = _run(SLURM, ["--dry_run", f"--flagfile={flagfile}", "--", *EXTRA], env).stdout
  assert [c[0] for c in _calls(env)] == ["scontrol"]  # only the read-only host lookup
  (srun,) = _commands(out)
  assert srun[:5] == ["srun", "--nodes=2", f"--ntasks={tasks}",
                      f"--ntasks-per-node={tasks // 2}", "--kill-on-bad-exit=1"]
  assert srun[5:7] == ["bash", "-c"] and srun[8:] == ["a3-train", *EXTRA]
  task = shlex.split(srun[7])
  assert task[:3] == ["exec", "a3-train", f"--flagfile={flagfile}"]
  assert _opt(task, "coordinator_address") == f"gpu07:{61440 + 12345 % 4096}"
  assert _opt(task, "num_processes") == str(tasks)
  assert _opt(task, "process_id") == "$SLURM_PROCID"
  assert ("--local_device_ids=$SLURM_LOCALID" in task) == (tasks > 2)
  assert _run(SLURM, [f"--flagfile={flagfile}", "--", *EXTRA],
              dict(env, DRY_RUN="1")).stdout == out


def test_slurm_tasks_get_their_rank_and_gpu(fake_env):
  env, flagfile = fake_env
  env = dict(_slurm_env(env, 2, 4, gpus=2), A3_COORDINATOR_PORT="7000")
  _run(SLURM, [f"--flagfile={flagfile}", "--", *EXTRA], env)
  trains = [c for c in _calls(env) if c[0] == "a3-train"]
  assert trains == [["a3-train", f"--flagfile={flagfile}", "--coordinator_address=gpu07:7000",
                     "--num_processes=4", f"--process_id={rank}",
                     f"--local_device_ids={rank % 2}", *EXTRA] for rank in range(4)]


@pytest.mark.parametrize("nodes, tasks, gpus, message", [
    (2, 6, 8, "3 tasks per node but 8 GPUs"),
    (2, 3, 8, "do not split evenly"),
])
def test_slurm_bad_layouts(fake_env, nodes, tasks, gpus, message):
  env, flagfile = fake_env
  proc = _run(SLURM, ["--dry_run", f"--flagfile={flagfile}"],
              _slurm_env(env, nodes, tasks, gpus), check=False)
  assert proc.returncode == 2 and message in proc.stderr


def test_slurm_outside_a_job_is_a_user_error(fake_env):
  env, flagfile = fake_env
  proc = _run(SLURM, ["--dry_run", f"--flagfile={flagfile}"], env, check=False)
  assert proc.returncode == 2 and "SLURM_JOB_ID is not set" in proc.stderr
