"""The one place that knows physical mesh axes.

Model code names logical axes only; this module holds the closed vocabulary of
logical names, the rules table mapping them to the mesh axes `data`, `fsdp`,
`tensor`, mesh construction from a spec string, and the shardings of params,
optimizer state and batches.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from a3_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

PARAM_AXES = ("vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "layers")
ACTIVATION_AXES = ("act_batch", "act_length", "act_embed", "act_heads", "act_mlp",
                   "act_vocab")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def _check_rules(rules) -> None:
  names = [name for name, _ in rules]
  unknown = set(names) - set(PARAM_AXES) - set(ACTIVATION_AXES)
  if unknown or len(names) != len(set(names)):
    raise UserError(f"logical rules name unknown or repeated axes: {sorted(unknown) or names}")
  for name, target in rules:
    for axis in (target if isinstance(target, tuple) else (target,)):
      if axis is not None and axis not in MESH_AXES:
        raise UserError(f"rule {name!r} -> {axis!r}: not a mesh axis {MESH_AXES}")


_check_rules(RULES)


def _axis_sizes(spec: str) -> tuple[dict[str, int], str | None]:
  """The sizes a mesh spec gives (missing axes 1, the -1 axis 1 for now) and the -1 axis."""
  sizes = {axis: 1 for axis in MESH_AXES}
  seen, rest = set(), None
  for item in [s for s in spec.split(",") if s.strip()]:
    name, sep, size_text = item.strip().partition(":")
    if not sep or name not in MESH_AXES:
      raise UserError(f"malformed --mesh={spec}: item {item!r} is not AXIS:SIZE "
                       f"with AXIS in {MESH_AXES}")
    if name in seen:
      raise UserError(f"malformed --mesh={spec}: axis {name!r} given twice")
    seen.add(name)
    try:
      size = int(size_text)
    except ValueError:
      raise UserError(f"malformed --mesh={spec}: size {size_text!r} is not an integer") from None
    if size == -1:
      if rest is not None:
        raise UserError(f"malformed --mesh={spec}: only one axis may be -1")
      rest = name
    elif size < 1:
      raise UserError(f"malformed --mesh={spec}: size of {name!r} must be >= 1 or -1")
    else:
      sizes[name] = size
  return sizes, rest


def parse_mesh_spec(spec: str, num_devices: int) -> dict[str, int]:
  """'data:2,fsdp:2,tensor:2' -> sizes of all three axes (missing ones are 1).

  One axis may be -1: it takes the devices the others leave.
  """
  sizes, rest = _axis_sizes(spec)
  known = math.prod(sizes.values())
  if rest is not None:
    if num_devices % known:
      raise UserError(f"--mesh={spec}: {num_devices} devices are not divisible by {known}")
    sizes[rest] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise UserError(f"--mesh={spec} uses {math.prod(sizes.values())} devices, "
                     f"but {num_devices} are available")
  return sizes


def mesh_device_count(spec: str, rest_default: int = 8) -> int:
  """Devices a mesh spec names: the product of its sizes, or `rest_default` when one
  axis is -1 (it takes whatever there is). A malformed spec is a UserError."""
  sizes, rest = _axis_sizes(spec)
  return rest_default if rest is not None else math.prod(sizes.values())


def make_mesh(spec: str = "data:-1", devices=None) -> jax.sharding.Mesh:
  """A mesh with axes (data, fsdp, tensor), all of AxisType.Auto."""
  devices = jax.devices() if devices is None else devices
  sizes = parse_mesh_spec(spec, len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def mesh_platform(mesh=None) -> str:
  """'tpu', 'gpu' or 'cpu': the platform of the devices a computation is built for.

  Those of `mesh` (a Mesh), else of the mesh in context while tracing (jax.set_mesh,
  or an abstract mesh from jax.sharding.use_abstract_mesh; both carry their device
  kind), else of the default backend, where an unsharded computation then runs. An
  ahead-of-time compile for a TPU slice from a CPU host thus takes the TPU's choices.
  """
  if mesh is not None:
    return mesh.devices.flat[0].platform
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def logical_to_spec(axes, shape=None, mesh=None, rules=RULES) -> P:
  """PartitionSpec for one array's logical axes.

  A dimension whose size the mesh axes do not divide stays replicated (e.g. 9
  heads on tensor:2). A mesh axis used twice in one array is a rules bug.
  """
  table = dict(rules)
  out, used = [], []
  for i, name in enumerate(axes):
    if name is not None and name not in table:
      raise UserError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    target = table.get(name) if name is not None else None
    mesh_axes = () if target is None else (target if isinstance(target, tuple) else (target,))
    if mesh is not None:
      mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
      if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
        mesh_axes = ()
    for a in mesh_axes:
      if a in used:
        raise UserError(f"logical axes {axes} map mesh axis {a!r} twice")
      used.append(a)
    out.append(None if not mesh_axes else (mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes))
  return P(*out)


def param_shardings(boxed_params, mesh) -> Any:
  """NamedShardings for a (flax-boxed) param or optimizer-state tree."""
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return NamedSharding(mesh, logical_to_spec(leaf.names, leaf.value.shape, mesh))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, boxed_params,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh) -> NamedSharding:
  """Rows over (data, fsdp); positions replicated."""
  return NamedSharding(mesh, logical_to_spec(("act_batch", "act_length"), None, mesh))


def axis_rules():
  """Context manager that lets model-level logical constraints resolve."""
  return nn.logical_axis_rules(RULES)


def shard_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Host-local numpy rows -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
