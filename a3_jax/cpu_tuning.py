"""XLA settings that help on the CPU backend, applied by the console scripts before JAX starts,
and the model settings a run on CPU devices defaults to (`model_overrides`).

XLA reads XLA_FLAGS once, when the first backend initialises, so `apply` must run
before any computation. It appends (never overrides) flags the user has not set
and does nothing where an accelerator will be the backend.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# The YNNPACK dot fusion of jaxlib's CPU backend: 10-40 % faster train steps here
# (benchmarks/step_ratio.py --xla_tuning vs --noxla_tuning).
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin",
                        "jax_rocm6_plugin", "libtpu")


def cpu_backend_expected(environ=os.environ) -> bool:
  """True when JAX will run on the CPU: JAX_PLATFORMS names cpu first, or is unset and
  no accelerator plugin is installed."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def model_overrides(platform: str) -> tuple[tuple[str, str], ...]:
  """--model overrides (NAME, VALUE) a run on `platform`'s devices ('cpu', 'tpu', 'gpu':
  sharding.mesh_platform of its mesh, never the host's backend) starts from; its own
  --model flags come after and win. XLA CPU runs unrolled layers faster than a scan;
  an accelerator keeps the scan (unrolled, the 1b step needs ~4x the temporaries)."""
  return (("scan_layers", "false"),) if platform == "cpu" else ()


def apply(environ=os.environ) -> tuple[str, ...]:
  """Appends CPU_XLA_FLAGS that XLA_FLAGS does not already set; returns those added.
  Nothing once a JAX backend is running (XLA has read its flags)."""
  if "jax" in sys.modules:  # else no backend can be running (and importing JAX takes seconds)
    from jax._src import xla_bridge  # no public API tells whether a backend has started
    if xla_bridge.backends_are_initialized():
      return ()
  if not cpu_backend_expected(environ):
    return ()
  existing = environ.get("XLA_FLAGS", "")
  added = tuple(f for f in CPU_XLA_FLAGS if f.split("=")[0] not in existing)
  if added:
    environ["XLA_FLAGS"] = " ".join([existing, *added]).strip()
  return added
