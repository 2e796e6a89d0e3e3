"""CPU XLA flags: appended only for the CPU backend, never over a user's own setting."""

import pytest
from jax._src import xla_bridge

from a3_jax import cpu_tuning


@pytest.fixture(autouse=True)
def _jax_not_started(monkeypatch):  # as in a console script, before JAX starts
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)


def test_flags_are_appended_on_cpu_and_keep_the_users_flags():
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  added = cpu_tuning.apply(env)
  assert added == cpu_tuning.CPU_XLA_FLAGS
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *added]
  assert cpu_tuning.apply(env) == ()  # idempotent


def test_nothing_once_jax_has_started(monkeypatch):
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  env = {"JAX_PLATFORMS": "cpu"}
  assert cpu_tuning.apply(env) == () and "XLA_FLAGS" not in env


def test_a_users_own_value_wins_and_accelerators_are_left_alone():
  name = cpu_tuning.CPU_XLA_FLAGS[0].split("=")[0]
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{name}=none"}
  assert cpu_tuning.apply(env) == () and env["XLA_FLAGS"] == f"{name}=none"
  env = {"JAX_PLATFORMS": "tpu,cpu"}
  assert cpu_tuning.apply(env) == () and "XLA_FLAGS" not in env


def test_model_defaults_follow_the_platform_of_the_run_devices():
  """scan_layers is off for CPU devices only, and the platform is the mesh's: an
  abstract mesh of TPU devices (as an ahead-of-time compile traces under) says 'tpu'
  on this CPU host."""
  import jax
  from a3_jax import sharding as shd
  assert cpu_tuning.model_overrides("cpu") == (("scan_layers", "false"),)
  assert cpu_tuning.model_overrides("tpu") == cpu_tuning.model_overrides("gpu") == ()
  mesh = shd.make_mesh("data:-1")
  assert shd.mesh_platform(mesh) == shd.mesh_platform() == "cpu"
  tpu = jax.sharding.AbstractDevice(device_kind="TPU v5", num_cores=2, platform="tpu")
  abstract = jax.sharding.AbstractMesh(tuple(mesh.shape.values()), tuple(mesh.shape),
                                       abstract_device=tpu)
  with jax.sharding.use_abstract_mesh(abstract):
    assert shd.mesh_platform() == "tpu"
