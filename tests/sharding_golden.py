"""The meshes the sharding tests run on and the golden table of parameter partition specs.

The table, `tests/golden/partition_specs.json`, holds the PartitionSpec of every
parameter of each preset in PRESETS on each mesh in MESHES. Tests only read it;
after a deliberate change to the sharding rules, rewrite it with

  python tests/sharding_golden.py

and review the diff of the JSON file like any other change.
"""

import json
import os

import jax

MESHES = ("data:8", "data:2,fsdp:2,tensor:2", "fsdp:4,tensor:2")
# small: every dimension divides; llama3.2-1b: tied embeddings, 32/8 heads; smollm2-135m:
# 9 query / 3 kv heads, which no tensor axis of 2 divides (replicated).
PRESETS = ("small", "llama3.2-1b", "smollm2-135m")
GOLDEN_SPECS = os.path.join(os.path.dirname(__file__), "golden", "partition_specs.json")


def spec_table(preset: str, mesh_spec: str) -> dict[str, str]:
  """{parameter path: str(PartitionSpec)} of a preset's params on a mesh (8 devices)."""
  from a3_jax import sharding as shd
  from a3_jax.config import get_preset
  from a3_jax.train.config import TrainConfig
  from a3_jax.train.state import state_shardings
  shardings = state_shardings(get_preset(preset), TrainConfig(), shd.make_mesh(mesh_spec)).params
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {jax.tree_util.keystr(path): str(s.spec) for path, s in flat}


def current_table() -> dict[str, dict[str, str]]:
  return {f"{preset}@{mesh}": spec_table(preset, mesh) for preset in PRESETS for mesh in MESHES}


def read_golden() -> dict[str, dict[str, str]]:
  with open(GOLDEN_SPECS) as f:
    return json.load(f)


if __name__ == "__main__":
  jax.config.update("jax_num_cpu_devices", 8)
  with open(GOLDEN_SPECS, "w") as f:
    json.dump(current_table(), f, indent=1, sort_keys=True)
    f.write("\n")
  print(f"wrote {GOLDEN_SPECS}")
