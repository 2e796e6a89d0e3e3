"""Sharded train step: mesh invariance, real sharding, determinism, accumulation."""

import dataclasses
import re

import chex
import jax
import numpy as np
import pytest
from flax.linen import meta

from a3_jax import sharding as shd
from a3_jax.config import get_preset
from a3_jax.grouping import parse_curriculum, parse_strategy, sample_groups
from a3_jax.model import A3LM, init_params
from a3_jax.train.config import Job, TrainConfig, validate_plan
from a3_jax.train.state import init_state, state_shardings
from a3_jax.train.step import loss_fn, make_train_step

from sharding_golden import MESHES, PRESETS, current_table, read_golden

CFG = get_preset("tiny")


def _batch(b=8, t=32, seed=0):
  rng = np.random.default_rng(seed)
  seg = np.ones((b, t), np.int32)
  seg[:, 20:] = 2  # two documents per row
  seg[::2, -5:] = 0  # and padding in half of the rows
  pos = np.where(seg == 2, np.arange(t) - 20, np.arange(t)).astype(np.int32)
  pos[seg == 0] = 0
  return {"tokens": rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32),
          "segment_ids": seg, "positions": pos}


def _loss_and_grads(mesh, params, batch, groups):
  tc = TrainConfig()
  model = A3LM(CFG)
  shardings = state_shardings(CFG, tc, mesh).params
  with jax.set_mesh(mesh), shd.axis_rules():
    params = jax.device_put(params, shardings)
    b = shd.shard_batch(batch, mesh)
    g = shd.shard_batch({"g": groups}, mesh)["g"]
    fn = jax.jit(jax.value_and_grad(lambda p: loss_fn(model, tc, p, b, g)[0]))
    loss, grads = fn(params)
  return float(loss), jax.tree.map(np.asarray, grads), params


def test_loss_and_grads_are_the_same_on_every_mesh():
  params = meta.unbox(init_params(CFG, jax.random.key(0)))
  batch = _batch()
  groups = np.asarray(sample_groups(parse_strategy("perm:4"), jax.random.key(1),
                                    batch["segment_ids"], batch["positions"]))
  ref_loss, ref_grads, _ = _loss_and_grads(shd.make_mesh("data:1", jax.devices()[:1]),
                                           params, batch, groups)
  for spec in MESHES:
    loss, grads, _ = _loss_and_grads(shd.make_mesh(spec), params, batch, groups)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-6, rtol=1e-4)


def test_parameters_are_sharded_as_the_rules_say():
  mesh = shd.make_mesh("data:2,fsdp:2,tensor:2")
  with jax.set_mesh(mesh):
    state = init_state(CFG, TrainConfig(), jax.random.key(0), mesh)
  p = state.params["params"]
  q = p["layers"]["attn"]["q_proj"]  # [L, D, N, H] = (layers, embed, q_heads, head_dim)
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  # Each device holds a quarter of it: D split over fsdp, N over tensor.
  assert q.addressable_shards[0].data.shape == (2, 32, 2, 16)
  assert p["embed"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  mu = state.opt_state[1][0].mu["params"]["layers"]["mlp"]["down_proj"]
  assert mu.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")


def test_partition_specs_match_golden_file():
  """Every preset of the table on every mesh of MESHES; the file is only read here
  (rewrite it with `python tests/sharding_golden.py` after a deliberate change)."""
  golden = read_golden()
  assert sorted(golden) == sorted(f"{p}@{m}" for p in PRESETS for m in MESHES)
  assert current_table() == golden


def _axes(spec: str) -> list[str | None]:
  """"P(None, 'fsdp')" -> [None, 'fsdp'] (a tuple entry becomes its text)."""
  return [None if a.strip() == "None" else a.strip().strip("'")
          for a in re.sub(r"^P\((.*?),?\)$", r"\1", spec).split(",") if a.strip()]


def test_golden_specs_follow_from_the_mesh_by_hand():
  """The golden file against facts worked out by hand, so that it cannot simply
  record whatever the rules produced."""
  golden = read_golden()
  for preset in PRESETS:
    # One data axis: nothing of a parameter is split.
    assert all(_axes(s) == [None] * len(_axes(s)) for s in golden[f"{preset}@data:8"].values())
    for mesh in ("data:2,fsdp:2,tensor:2", "fsdp:4,tensor:2"):
      table = golden[f"{preset}@{mesh}"]
      # [L, D, N, H]: D over fsdp; heads over tensor unless 2 does not divide them
      # (smollm2-135m: 9 query and 3 kv heads).
      heads = None if preset == "smollm2-135m" else "tensor"
      for proj in ("q_proj", "k_proj", "v_proj"):
        assert _axes(table[f"['params']['layers']['attn']['{proj}']"]) == [None, "fsdp", heads, None]
      assert _axes(table["['params']['layers']['mlp']['down_proj']"]) == [None, "tensor", "fsdp"]
      assert _axes(table["['params']['embed']"]) == ["tensor", "fsdp"]
      assert ("['params']['lm_head']" in table) == (not get_preset(preset).tie_embeddings)


def _run(steps, tc, curriculum="perm:4:100", mesh_spec="data:8", seed=0):
  mesh = shd.make_mesh(mesh_spec)
  cur = parse_curriculum(curriculum)
  with jax.set_mesh(mesh):
    shardings = state_shardings(CFG, tc, mesh)
    state = init_state(CFG, tc, jax.random.key(seed), mesh)
    step = make_train_step(CFG, tc, cur, mesh, shardings)
    batch = shd.shard_batch(_batch(), mesh)
    losses, stages = [], []
    for _ in range(steps):
      state, metrics = step(state, batch, jax.random.key(seed + 1))
      losses.append(float(metrics["loss"]))
      stages.append(int(metrics["stage"]))
  step.stages = stages
  return losses, step


def test_tiny_model_overfits_a_batch_and_runs_are_reproducible():
  tc = TrainConfig(lr=1e-2, warmup_steps=5, total_steps=80, weight_decay=0.0)
  losses, _ = _run(80, tc, curriculum="block:2:80")
  assert losses[-1] < 0.25 * losses[0], losses
  again, _ = _run(80, tc, curriculum="block:2:80")
  assert losses == again


def _compiles(step) -> dict:
  """Compilations of each program of a train step (causal: True, A3 or other: False)."""
  return {causal: program._cache_size() for causal, program in step.programs.items()}


def test_stage_changes_do_not_recompile_the_step():
  """One program per objective, each compiled once: the 'causal' stage's, and the A3
  stages' (which switch groupings inside their program)."""
  tc = TrainConfig(total_steps=8)
  losses, step = _run(8, tc, curriculum="causal:2,ar:2,block:2:2,perm:4:2")
  assert step.stages == [0, 0, 1, 1, 2, 2, 3, 3]
  assert _compiles(step) == {False: 1, True: 1}
  _, step = _run(2, tc, curriculum="ar:1,perm:4:1")
  assert _compiles(step) == {False: 1}  # no 'causal' stage: no causal program


def test_a_step_whose_updated_params_are_not_finite_is_not_applied():
  """Loss and gradient norm finite, the update not (a NaN in the optimizer's moments,
  as an lr infinite in float32 makes): the old params are kept and the step flagged."""
  tc = TrainConfig(total_steps=4)
  mesh = shd.make_mesh("data:8")
  with jax.set_mesh(mesh):
    shardings = state_shardings(CFG, tc, mesh)
    state = init_state(CFG, tc, jax.random.key(0), mesh)
    nan_moments = jax.tree.map(lambda x: x * np.nan if x.ndim else x, state.opt_state)
    state = state.replace(opt_state=nan_moments)
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(CFG, tc, parse_curriculum("ar:4"), mesh, shardings)
    state, metrics = step(state, shd.shard_batch(_batch(), mesh), jax.random.key(1))
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert int(metrics["nonfinite"]) == 1
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.params), before)


def test_gradient_accumulation_matches_one_big_batch():
  tc = TrainConfig(lr=1e-3, warmup_steps=0, total_steps=3)
  plain, _ = _run(3, tc)
  accumulated, _ = _run(3, TrainConfig(lr=1e-3, warmup_steps=0, total_steps=3, grad_accum=2))
  np.testing.assert_allclose(accumulated, plain, rtol=1e-5)


def test_causal_stage_trains_the_content_stream_then_the_query_stream():
  tc = TrainConfig(lr=1e-2, warmup_steps=0, total_steps=12, weight_decay=0.0)
  mixed, step = _run(12, tc, curriculum="causal:10,perm:4:2")
  causal, _ = _run(10, dataclasses.replace(tc, objective="ar"), curriculum="ar:12")
  np.testing.assert_allclose(mixed[:10], causal, rtol=1e-5)  # the causal LM's steps
  assert causal[-1] < 0.8 * causal[0]  # objective 'ar' trains the content stream
  assert mixed[10] > mixed[9] + 0.3, mixed  # then the query stream's (new) loss
  assert step.stages == [0] * 10 + [1, 1] and _compiles(step) == {False: 1, True: 1}
  job = Job(curriculum="causal:10,perm:4:2", train=dataclasses.replace(tc, objective="ar"))
  with pytest.raises(ValueError, match="belongs to objective 'a3'"):
    validate_plan(job, CFG, parse_curriculum(job.curriculum))


@pytest.mark.parametrize("spec, message", [
    ("data:3", "uses 3 devices, but 8 are available"),
    ("data:2,model:4", "not AXIS:SIZE"),
    ("data:-1,fsdp:-1", "only one axis may be -1"),
    ("data:x", "is not an integer"),
    ("data:2,data:4", "given twice"),
    ("fsdp:3,data:-1", "not divisible"),
])
def test_malformed_mesh_specs_raise(spec, message):
  with pytest.raises(ValueError, match=message):
    shd.make_mesh(spec)


def test_parse_mesh_spec_fills_the_rest():
  assert shd.parse_mesh_spec("data:-1,tensor:2", 8) == {"data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.slow  # compiles a kernel-attention train step with grad_accum (~30 s on 2 busy cores)
def test_kernel_attention_reports_rows_on_the_kernel_and_on_the_fallback():
  """Each micro-batch takes the block kernel only when all its rows' groups are blocks
  of attention_group_size (documents of whole groups); the step counts both paths."""
  cfg = CFG.replace(attention="kernel", attention_group_size=4)
  tc = TrainConfig(total_steps=2, grad_accum=2)
  mesh = shd.make_mesh("data:8")
  batch = _batch()
  with jax.set_mesh(mesh):
    shardings = state_shardings(cfg, tc, mesh)
    state = init_state(cfg, tc, jax.random.key(0), mesh)
    step = make_train_step(cfg, tc, parse_curriculum("perm:4:2"), mesh, shardings)
    state, aligned = step(state, shd.shard_batch(batch, mesh), jax.random.key(1))
    cut = dict(batch)  # the second micro-batch's first documents end inside a group
    cut["segment_ids"] = batch["segment_ids"].copy()
    cut["segment_ids"][4:, 18:20] = 2
    cut["positions"] = np.where(cut["segment_ids"] == 2, np.arange(32) - 18,
                                batch["positions"]).astype(np.int32)
    cut["positions"][:4] = batch["positions"][:4]
    cut["positions"][cut["segment_ids"] == 0] = 0
    _, mixed = step(state, shd.shard_batch(cut, mesh), jax.random.key(1))
  assert (float(aligned["kernel_rows"]), float(aligned["fallback_rows"])) == (8, 0)
  assert (float(mixed["kernel_rows"]), float(mixed["fallback_rows"])) == (4, 4)


def test_mdm_step_anneals_attention_from_causal():
  """The first step of --objective=mdm --mdm_shift --mdm_anneal_steps=N computes the
  MDLM loss under causal attention (width-1 blocks), not full attention."""
  from a3_jax import mdm
  tc = TrainConfig(lr=1e-3, warmup_steps=0, total_steps=4, objective="mdm", mdm_shift=True,
                   mdm_anneal_steps=4)
  losses, _ = _run(1, tc, curriculum="ar:4")
  mesh = shd.make_mesh("data:8")
  with jax.set_mesh(mesh):
    params = jax.device_get(init_state(CFG, tc, jax.random.key(0), mesh).params)
  batch = _batch()
  key = jax.random.fold_in(jax.random.key(1), 0)
  stats = lambda g: mdm.loss_stats(A3LM(CFG), tc, params, batch, key, g)
  causal, full = stats(batch["positions"]), stats(None)
  np.testing.assert_allclose(losses[0], causal["nll"] / causal["count"], rtol=1e-5)
  assert abs(float(full["nll"] / full["count"]) - losses[0]) > 1e-3
