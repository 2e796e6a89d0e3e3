"""Multi-host start-up: one JAX process per host (or per GPU) via `jax.distributed`.

`initialize_from_flags()` runs first in `a3-train`, before anything touches a
device, and picks one of four modes:

  explicit  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
            [--local_device_ids=0,1] (or env A3_COORDINATOR, A3_NUM_PROCESSES,
            A3_PROCESS_ID, A3_LOCAL_DEVICE_IDS; flags win). JAX's cluster
            detection is off, so a process sees all its local devices unless
            local_device_ids says otherwise. N = 1 is a single host.
  slurm     inside an srun step of SLURM_NTASKS > 1 tasks and nothing explicit:
            JAX reads the SLURM environment and gives each task one GPU
            (SLURM_LOCALID).
  tpu       a TPU VM (libtpu installed, TPU device files present): JAX reads the
            slice's workers from the VM metadata (one worker is a 1-process run).
  single    otherwise: nothing is initialized; one process sees all local devices.

On CPU the devices per process are `jax_num_cpu_devices` (env
JAX_NUM_CPU_DEVICES=4), set before the first device use.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Mapping

import jax
from absl import flags
from a3_jax.errors import UserError

# This module's own flags; a3-train adds them to its parser (cli/train.py).
FLAGS = flags.FlagValues()
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's coordinator (multi-host runs; env A3_COORDINATOR)",
                    flag_values=FLAGS)
flags.DEFINE_integer("num_processes", None, "processes in the run (env A3_NUM_PROCESSES)",
                     flag_values=FLAGS)
flags.DEFINE_integer("process_id", None, "this process, 0..num_processes-1 (env A3_PROCESS_ID)",
                     flag_values=FLAGS)
flags.DEFINE_list("local_device_ids", None,
                  "local devices this process uses, e.g. 0 for one GPU per process "
                  "(default: all; env A3_LOCAL_DEVICE_IDS)", flag_values=FLAGS)

# What JAX's own SLURM detection reads (jax._src.clusters.slurm_cluster).
SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")
ENV = {"coordinator_address": "A3_COORDINATOR", "num_processes": "A3_NUM_PROCESSES",
       "process_id": "A3_PROCESS_ID", "local_device_ids": "A3_LOCAL_DEVICE_IDS"}


@dataclasses.dataclass(frozen=True)
class Settings:
  """Explicit multi-process settings; all None when the launcher gave none."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None


def _int(name: str, text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise UserError(f"{name}={text!r}: expected an integer") from None


def _device_ids(name: str, items) -> tuple[int, ...]:
  return tuple(_int(name, str(item).strip()) for item in items if str(item).strip())


def settings_from(values: Mapping[str, object], environ: Mapping[str, str]) -> Settings:
  """Settings from flag values (None = unset) falling back to the A3_* variables."""
  def pick(name):
    value = values.get(name)
    if value is not None:
      return value
    return environ.get(ENV[name]) or None
  coordinator, count, index, ids = (pick(n) for n in ENV)
  return Settings(
      coordinator_address=coordinator,
      num_processes=None if count is None else _int("num_processes", str(count)),
      process_id=None if index is None else _int("process_id", str(index)),
      local_device_ids=None if ids is None else _device_ids(
          "local_device_ids", ids.split(",") if isinstance(ids, str) else ids))


def _explicit(s: Settings) -> bool:
  """Whether the launcher gave settings; checks that they are complete and sane."""
  given = [k for k in ("coordinator_address", "num_processes", "process_id")
           if getattr(s, k) is not None]
  if not given or given == ["num_processes"] and s.num_processes == 1:
    if s.local_device_ids is not None:
      raise UserError("--local_device_ids needs --coordinator_address, --num_processes "
                       "and --process_id")
    return bool(given)
  missing = [k for k in ("coordinator_address", "num_processes", "process_id") if k not in given]
  if missing:
    raise UserError(f"multi-process settings {given} also need "
                     + ", ".join(f"--{m}" for m in missing))
  host, sep, port = s.coordinator_address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise UserError(f"--coordinator_address={s.coordinator_address!r}: expected HOST:PORT")
  if s.num_processes < 1:
    raise UserError(f"--num_processes must be >= 1, got {s.num_processes}")
  if not 0 <= s.process_id < s.num_processes:
    raise UserError(f"--process_id={s.process_id} is not in [0, {s.num_processes})")
  return True


def on_tpu_vm() -> bool:
  """A TPU VM: libtpu is installed and TPU chips are attached (v2-v4 /dev/accel*,
  v5e and later /dev/vfio/N)."""
  return (importlib.util.find_spec("libtpu") is not None
          and bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")))


def mode(s: Settings, environ: Mapping[str, str]) -> str:
  """'explicit', 'slurm', 'tpu' or 'single' (see the module docstring)."""
  if _explicit(s):
    return "explicit" if s.num_processes > 1 else "single"
  if all(v in environ for v in SLURM_STEP_VARS) and int(environ["SLURM_NTASKS"]) > 1:
    return "slurm"
  return "tpu" if on_tpu_vm() else "single"


def initialize(s: Settings, environ: Mapping[str, str] = os.environ) -> str:
  """Starts the distributed runtime as `mode` says; returns the mode.

  Must run before any device is used. A second call (jax.distributed already
  up) changes nothing.
  """
  chosen = mode(s, environ)
  if chosen == "single" or jax.distributed.is_initialized():
    return chosen
  if chosen == "explicit":
    jax.distributed.initialize(
        coordinator_address=s.coordinator_address, num_processes=s.num_processes,
        process_id=s.process_id,
        local_device_ids=None if s.local_device_ids is None else list(s.local_device_ids),
        cluster_detection_method="deactivate")
  else:
    jax.distributed.initialize()
  return chosen


def initialize_from_flags(fv: flags.FlagValues = FLAGS) -> str:
  """`initialize` with the parsed flags of this module (in `fv`) and the A3_* variables."""
  values = {name: fv[name].value for name in ENV}
  return initialize(settings_from(values, os.environ))
