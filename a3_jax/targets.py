"""Accelerators a step can be compiled for ahead of time, on a host that has none.

A target name is a TPU slice as libtpu names it (`v5p:2x2x1`, `v5e:16x16`, `v4:2x2x1`,
`v6e:2x2`: chips per dimension) or GPUs as `h100:8` (one host of 8) or `h100:SxHxD`
(slices x hosts x devices per host), for the GPU models in GPU_MODELS. The CPU stays
the runtime; libtpu ([tpu-aot] extra) or the CUDA plugin ([gpu-aot] extra) only compiles.
The GPU devices are described by the target files in a3_jax/gpu_targets/ (what each
number is and where it comes from: the README there).

CHIPS holds what a plan is checked against per chip: HBM capacity and bandwidth
(peak FLOP/s: flops.PEAK_BF16_FLOPS), keyed like flops by a device_kind substring.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from importlib import resources

from a3_jax.errors import UserError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-device facts from the vendor's data sheet (`source`)."""

  hbm_bytes: float
  hbm_bytes_per_s: float
  source: str


CHIPS = {  # device_kind substring -> Chip (the longest matching substring wins)
    "TPU v4": Chip(32 * GIB, 1228e9, "cloud.google.com/tpu/docs/v4: 32 GiB HBM2, 1228 GB/s"),
    "TPU v5 lite": Chip(16 * GIB, 819e9, "cloud.google.com/tpu/docs/v5e: 16 GiB HBM2, 819 GB/s"),
    "TPU v5": Chip(95 * GIB, 2765e9, "cloud.google.com/tpu/docs/v5p: 95 GiB HBM2e, 2765 GB/s"),
    "TPU v6 lite": Chip(32 * GIB, 1640e9, "cloud.google.com/tpu/docs/v6e: 32 GiB HBM, 1640 GB/s"),
    "A100": Chip(80 * GIB, 2039e9, "NVIDIA A100 data sheet (SXM4 80GB): 80 GB HBM2e, 2039 GB/s"),
    "H100": Chip(80 * GIB, 3350e9, "NVIDIA H100 data sheet (SXM5): 80 GB HBM3, 3.35 TB/s"),
    "H200": Chip(141e9, 4800e9, "NVIDIA H200 data sheet (SXM): 141 GB HBM3e, 4.8 TB/s"),
}

GPU_MODELS = ("a100", "h100", "h200")  # a3_jax/gpu_targets/<model>.txtpb
_TPU_NAME = re.compile(r"^v\d+[a-z]*:\d+(x\d+)+$")
_GPU_NAME = re.compile(r"^([a-z0-9]+):(\d+)(?:x(\d+)x(\d+))?$")
_HELP = ("TPU slices as libtpu names them (v5p:2x2x1, v5e:2x2, v4:2x2x1, v6e:16x16) or GPUs "
         f"as MODEL:N or MODEL:SLICESxHOSTSxDEVICES with MODEL in {GPU_MODELS} (h100:8)")


def prepare_environment(environ=os.environ) -> None:
  """Before JAX's backends start: the CPU is the runtime (an installed CUDA plugin then
  neither starts nor checks for CUDA libraries), and libtpu asks no cloud metadata
  server which TPU this host is (it has none) nor locks it for one process (there is
  no TPU to share: several compiles may run at once). JAX_PLATFORMS is left alone
  once a backend is running."""
  import jax
  from jax._src import xla_bridge  # no public API tells whether a backend has started
  environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if not xla_bridge.backends_are_initialized():
    environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")


def gpu_target_config(model: str) -> str:
  """The GpuTargetConfigProto text of a GPU model in GPU_MODELS."""
  if model not in GPU_MODELS:
    raise UserError(f"--topology: unknown GPU model {model!r}; known: {GPU_MODELS}")
  return resources.files("a3_jax").joinpath(f"gpu_targets/{model}.txtpb").read_text()


def target_devices(name: str) -> list:
  """The compile-only devices of target `name` (see the module doc); a UserError names
  the extra to install or the malformed name."""
  from jax.experimental import topologies
  gpu = _GPU_NAME.match(name)
  if gpu and gpu.group(1) in GPU_MODELS:
    sizes = (1, 1, int(gpu.group(2))) if gpu.group(3) is None else tuple(
        int(g) for g in gpu.group(2, 3, 4))
    if min(sizes) < 1:
      raise UserError(f"--topology={name}: every size must be >= 1")
    try:
      topo = topologies.get_topology_desc(platform="cuda", topology="x".join(map(str, sizes)),
                                          target_config=gpu_target_config(gpu.group(1)))
    except NotImplementedError:
      raise UserError(f"--topology={name} needs the CUDA plugin: pip install "
                      "'a3_jax[gpu-aot]' (no CUDA libraries needed)") from None
    return list(topo.devices)
  if not _TPU_NAME.match(name):
    raise UserError(f"--topology={name!r} is not a target name: {_HELP}")
  chips = math.prod(int(s) for s in name.split(":")[1].split("x"))
  kwargs = {"chips_per_host_bounds": (1, 1, 1)} if chips == 1 else {}
  if name.startswith("v4:"):
    kwargs["chip_config_name"] = "megacore"  # one device per chip, as v4 trains
  try:
    topo = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
  except RuntimeError as e:
    if "not installed" in str(e):
      raise UserError(f"--topology={name} needs libtpu: pip install 'a3_jax[tpu-aot]'") from None
    raise UserError(f"--topology={name}: libtpu refused it ({str(e).splitlines()[0]}); "
                    f"{_HELP}") from None
  return list(topo.devices)


def chip_of(device) -> Chip | None:
  """The CHIPS entry of a device (by its device_kind), or None (e.g. a CPU)."""
  kind = device.device_kind
  for name in sorted(CHIPS, key=len, reverse=True):
    if name in kind:
      return CHIPS[name]
  return None
