"""What checkpoint checksums cost: hashing at save (inside orbax's commit, off the
training thread) and verification at restore, next to the save and restore they
guard, on a real train state (params + AdamW moments).

Each state is saved once through checkpoint.make_manager, then restored and
verified alternately `--iters` times (medians; the page cache is warm for both,
as on a resume that follows a save). Last line: one JSON object per state, with
`verify_over_restore` = verification time / restore time.

  python benchmarks/checksum_cost.py [--states=small,100m] [--iters=3]
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import jax
from absl import app, flags, logging

from a3_jax import checkpoint as ckpt
from a3_jax import sharding as shd
from a3_jax.config import ModelConfig, get_preset
from a3_jax.train_step import TrainConfig, init_state, state_shardings

# ~100M parameters: a GPT-2-small-sized LLaMA with a 32k vocabulary.
_100M = ModelConfig(vocab_size=32000, d_model=768, num_layers=12, num_heads=12, num_kv_heads=12,
                    head_dim=64, mlp_dim=2048, max_seq_len=1024, tie_embeddings=True)
_STATES = flags.DEFINE_list("states", ["small", "100m"], "small (the default run's preset), 100m")
_ITERS = flags.DEFINE_integer("iters", 3, "restores and verifications timed per state")


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _measure(name: str, config: ModelConfig, mesh) -> dict:
  tc = TrainConfig()
  state = init_state(config, tc, jax.random.key(0), mesh)
  # AdamW moments as after training (fresh ones are zeros, which compress away)
  moments = jax.tree.map(lambda x: x + 1e-3 * jax.random.normal(jax.random.key(1), x.shape, x.dtype)
                         if x.ndim else x, state.opt_state)
  state = state.replace(opt_state=moments)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  target = ckpt.abstract_like(state, state_shardings(config, tc, mesh))
  with tempfile.TemporaryDirectory() as workdir:
    manager = ckpt.make_manager(workdir)
    args = ckpt.ocp.args.Composite(state=ckpt.ocp.args.StandardSave(state))
    save_s = _timed(lambda: (manager.save(1, args=args), manager.wait_until_finished()))
    step_dir = manager.directory / "1"
    hash_s = _timed(lambda: ckpt.write_checksums(step_dir))  # what the commit added
    size = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(step_dir) for n in ns)
    restore = ckpt.ocp.args.Composite(state=ckpt.ocp.args.StandardRestore(target))
    load = lambda: jax.block_until_ready(manager.restore(1, args=restore)["state"])
    restores, verifies = [], []
    for _ in range(_ITERS.value):
      restores.append(_timed(load))
      verifies.append(_timed(lambda: ckpt.verify_checksums(step_dir)))
    manager.close()
  r, v = statistics.median(restores), statistics.median(verifies)
  return {"state": name, "params": params, "bytes": size, "save_s": round(save_s, 3),
          "hash_at_save_s": round(hash_s, 3), "restore_s": round(r, 3), "verify_s": round(v, 3),
          "verify_over_restore": round(v / r, 3), "verify_MB_per_s": round(size / v / 1e6)}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore
  mesh = shd.make_mesh("data:-1")
  configs = {"small": get_preset("small"), "100m": _100M}
  results = []
  for name in _STATES.value:
    result = _measure(name, configs[name], mesh)
    print(f"{name}: {result['params'] / 1e6:.1f}M params, {result['bytes'] / 1e6:.0f} MB; "
          f"restore {result['restore_s']:.3f} s, verify {result['verify_s']:.3f} s "
          f"(x{result['verify_over_restore']}); save {result['save_s']:.3f} s of which "
          f"hashing {result['hash_at_save_s']:.3f} s", flush=True)
    results.append(result)
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
