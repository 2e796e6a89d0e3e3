"""Train state, optimizer, the pure loss function and the jitted, sharded train step.

Randomness enters only through `key = fold_in(seed_key, step)`, so a resumed run
needs no saved key; the curriculum stage is a traced function of the step, so
stages change without recompiling.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.linen import meta

from a3_jax import attention, mdm
from a3_jax import sharding as shd
from a3_jax.config import ModelConfig
from a3_jax.grouping import Curriculum, stage_groups
from a3_jax.loss import grouped_nll, loss_weights
from a3_jax.model import A3LM, init_params, stream_rows
from a3_jax.errors import UserError

OBJECTIVES = ("a3", "ar", "mdm")
SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings. `objective='ar'` trains the causal baseline
  (content stream only, next-token loss) on the same backbone; 'mdm' the
  masked-diffusion baseline (a3_jax.mdm: bidirectional content stream, MDLM loss);
  mdm_shift and mdm_anneal_steps adapt a causal model to it the DiffuLLaMA way
  (position i predicts token i+1; attention annealed from causal to full)."""

  lr: float = 3e-4
  warmup_steps: int = 100
  total_steps: int = 1000
  schedule: str = "cosine"
  end_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  clip_norm: float = 1.0
  grad_accum: int = 1
  count_first_group: bool = True
  z_loss: float = 0.0
  objective: str = "a3"
  mdm_shift: bool = False
  mdm_anneal_steps: int = 0

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise UserError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
    if self.schedule not in SCHEDULES:
      raise UserError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    # Field names are a3-train's flag names (total_steps: --steps).
    if self.grad_accum < 1:
      raise UserError(f"--grad_accum must be >= 1, got {self.grad_accum}")
    checks = [("lr", self.lr, self.lr > 0, "> 0"),
              ("clip_norm", self.clip_norm, self.clip_norm > 0, "> 0"),
              ("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
              ("z_loss", self.z_loss, self.z_loss >= 0, ">= 0"),
              ("end_lr_ratio", self.end_lr_ratio, self.end_lr_ratio >= 0, ">= 0"),
              ("b1", self.b1, 0 <= self.b1 < 1, "in [0, 1)"),
              ("b2", self.b2, 0 <= self.b2 < 1, "in [0, 1)")]
    for name, value, ok, bound in checks:
      if not (math.isfinite(value) and ok):
        raise UserError(f"--{name} must be a finite number {bound}, got {value}")
    if self.warmup_steps < 0:
      raise UserError(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.total_steps < 1:
      raise UserError(f"--steps must be >= 1, got {self.total_steps}")
    if self.mdm_anneal_steps < 0:
      raise UserError(f"--mdm_anneal_steps must be >= 0, got {self.mdm_anneal_steps}")
    if self.objective != "mdm" and (self.mdm_shift or self.mdm_anneal_steps):
      raise UserError("--mdm_shift and --mdm_anneal_steps apply to objective 'mdm' only")


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
  warmup = max(tc.warmup_steps, 1)
  decay_steps = max(tc.total_steps - tc.warmup_steps, 1)
  end = tc.lr * tc.end_lr_ratio
  if tc.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, warmup + decay_steps, end)
  after = (optax.linear_schedule(tc.lr, end, decay_steps) if tc.schedule == "linear"
           else optax.constant_schedule(tc.lr))
  return optax.join_schedules([optax.linear_schedule(0.0, tc.lr, warmup), after], [warmup])


def _decay_mask(params):
  """Decay matrices, not norm scales or the query start vector."""
  def keep(path, _):
    names = {getattr(p, "key", None) for p in path}
    return not ({"scale", "query_embed"} & names)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(tc.clip_norm),
      optax.adamw(learning_rate_schedule(tc), b1=tc.b1, b2=tc.b2,
                  weight_decay=tc.weight_decay, mask=_decay_mask))


def _boxed_state(model_config: ModelConfig, tc: TrainConfig, key) -> TrainState:
  params = init_params(model_config, key)
  opt_state = make_optimizer(tc).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def state_shardings(model_config: ModelConfig, tc: TrainConfig, mesh) -> TrainState:
  """NamedShardings of every leaf of the (unboxed) train state."""
  abstract = jax.eval_shape(lambda k: _boxed_state(model_config, tc, k), jax.random.key(0))
  return shd.param_shardings(abstract, mesh)


def init_state(model_config: ModelConfig, tc: TrainConfig, key, mesh) -> TrainState:
  """A train state born sharded (never whole on one device)."""
  shardings = state_shardings(model_config, tc, mesh)
  with shd.axis_rules():
    return jax.jit(lambda k: meta.unbox(_boxed_state(model_config, tc, k)),
                   out_shardings=shardings)(key)


def state_from_params(params, model_config: ModelConfig, tc: TrainConfig, mesh) -> TrainState:
  """A fresh train state (step 0, zero moments) around given (unboxed) params."""
  shardings = state_shardings(model_config, tc, mesh)
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(make_optimizer(tc).init, out_shardings=shardings.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
                    params=params, opt_state=opt_state)


def batch_groups(curriculum: Curriculum, step, key, batch):
  """Group ids of the batch's rows for the stage that `step` is in."""
  stage = curriculum.stage_index(step)
  return stage, stage_groups(curriculum, stage, key, batch["segment_ids"], batch["positions"])


def loss_stats(model: A3LM, tc: TrainConfig, params, batch, groups_BxT, key=None,
               causal=None):
  """Summed loss statistics (see loss.grouped_nll) of one batch and grouping.

  batch: tokens, segment_ids, positions [B, T] int32. key: the step's key, from
  which objective 'mdm' draws its noise (the grouping then gives its attention
  groups: mdm.anneal_groups, all 0 = full attention). causal: a traced bool
  (objective 'a3', a curriculum with a 'causal' stage): this step trains the
  content stream as a causal LM instead (lax.cond: only one branch runs).
  """
  if tc.objective == "mdm":
    return mdm.loss_stats(model, tc, params, batch, key, groups_BxT)
  if tc.objective == "ar":
    return _causal_stats(model, tc, params, batch)
  if causal is None:
    return _a3_stats(model, tc, params, batch, groups_BxT)
  return jax.lax.cond(causal, lambda: _causal_stats(model, tc, params, batch),
                      lambda: _a3_stats(model, tc, params, batch, groups_BxT))


def _causal_stats(model: A3LM, tc: TrainConfig, params, batch):
  """Next-token loss of the content stream (the causal LM)."""
  tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
  content, _ = stream_rows(pos, seg, pos)
  h, _, _ = model.apply(params, tokens, content, None, method=A3LM.forward)
  logits = model.apply(params, h[:, :-1], method=A3LM.logits)
  # Next-token loss inside each document: the target must share the segment.
  weights = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)).astype(jnp.float32)
  return grouped_nll(logits, tokens[:, 1:], weights, tc.z_loss)


def _a3_stats(model: A3LM, tc: TrainConfig, params, batch, groups_BxT):
  """The grouped loss of the query stream (the A3 objective)."""
  tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
  content, query = stream_rows(groups_BxT, seg, pos)
  _, g, _ = model.apply(params, tokens, content, query, method=A3LM.forward, content_out=False)
  logits = model.apply(params, g, method=A3LM.logits)
  weights = loss_weights(groups_BxT, seg, tc.count_first_group)
  return grouped_nll(logits, tokens, weights, tc.z_loss)


def loss_fn(model: A3LM, tc: TrainConfig, params, batch, groups_BxT):
  """Mean NLL per counted token (+ z-loss); returns (loss, summed stats)."""
  stats = loss_stats(model, tc, params, batch, groups_BxT)
  count = jnp.maximum(stats["count"], 1.0)
  return (stats["nll"] + stats["z"]) / count, stats


def _accumulated_grads(model, tc, params, batch, groups_BxT, key, causal=None):
  """Gradient of the token-mean loss over grad_accum micro-batches (scan)."""
  def sum_loss(p, micro, groups, k):
    stats = loss_stats(model, tc, p, micro, groups, k, causal)
    return stats["nll"] + stats["z"], stats

  grad_fn = jax.grad(sum_loss, has_aux=True)
  a = tc.grad_accum
  if a == 1:
    grads, stats = grad_fn(params, batch, groups_BxT, key)
  else:
    split = lambda x: x.reshape((a, x.shape[0] // a) + x.shape[1:])
    micro_batches = jax.tree.map(split, batch)

    def body(acc, xs):
      micro, groups, k = xs
      g, s = grad_fn(params, micro, groups, k)
      return jax.tree.map(jnp.add, acc, (g, s)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    zero_stats = {k: jnp.zeros((), jnp.float32) for k in ("nll", "count", "correct", "z")}
    (grads, stats), _ = jax.lax.scan(body, (zeros, zero_stats),
                                     (micro_batches, split(groups_BxT), jax.random.split(key, a)))
  count = jnp.maximum(stats["count"], 1.0)
  return jax.tree.map(lambda g: g / count, grads), stats


def _kernel_rows(groups_BxT, seg_BxT, grad_accum: int, group_size: int) -> dict:
  """Rows whose attention took the block kernel vs the chunked fallback this step.

  The dispatch decides per forward pass (one micro-batch) for all its rows, with
  the predicate `attend` itself uses on the same groups and segment ids."""
  a = grad_accum
  split = lambda x: x.reshape((a, x.shape[0] // a) + x.shape[1:])
  applies_A = jax.vmap(lambda g, s: attention.kernel_applies(g, s, group_size))(
      split(groups_BxT), split(seg_BxT))
  kernel = jnp.sum(applies_A.astype(jnp.float32)) * (groups_BxT.shape[0] // a)
  return {"kernel_rows": kernel, "fallback_rows": groups_BxT.shape[0] - kernel}


def make_train_step(model_config: ModelConfig, tc: TrainConfig, curriculum: Curriculum,
                    mesh, shardings: TrainState):
  """jit(state, batch, seed_key) -> (state, metrics), state donated.

  A step whose loss or gradient norm is not finite keeps the old params and
  optimizer state (a select inside the step: no extra host sync) and reports
  metrics['nonfinite'] = 1; the step counter advances either way.
  """
  model = A3LM(model_config)
  tx = make_optimizer(tc)
  schedule = learning_rate_schedule(tc)

  def step_fn(state: TrainState, batch, seed_key):
    key = jax.random.fold_in(seed_key, state.step)
    stage, groups = batch_groups(curriculum, state.step, key, batch)
    if tc.objective == "mdm":  # the curriculum's groups become the annealed attention
      groups = mdm.anneal_groups(state.step, tc.mdm_anneal_steps, batch["segment_ids"],
                                 batch["positions"], jax.random.fold_in(key, 1))
    causal = (curriculum.is_causal(stage)
              if tc.objective == "a3" and curriculum.has_causal else None)
    grads, stats = _accumulated_grads(model, tc, state.params, batch, groups, key, causal)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    count = jnp.maximum(stats["count"], 1.0)
    loss, grad_norm = (stats["nll"] + stats["z"]) / count, optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep, params, state.params)
    opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    metrics = {"loss": loss,
               "nll_per_token": stats["nll"] / count,
               "accuracy": stats["correct"] / count,
               "tokens": stats["count"],
               "grad_norm": grad_norm,
               "lr": schedule(state.step),
               "stage": stage,
               "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
    if model_config.attention == "kernel" and tc.objective == "a3":
      metrics.update(_kernel_rows(groups, batch["segment_ids"], tc.grad_accum,
                                  model_config.attention_group_size))
    return TrainState(state.step + 1, params, opt_state), metrics

  batch_shard = shd.batch_sharding(mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  jitted = jax.jit(step_fn, in_shardings=(shardings, batch_shard, replicated),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))

  def run(state, batch, seed_key):
    with shd.axis_rules():
      return jitted(state, batch, seed_key)

  run.jitted = jitted
  return run


def make_eval_step(model_config: ModelConfig, tc: TrainConfig, mesh, shardings: TrainState):
  """jit(params, batch, groups) -> summed stats (nll, count, correct, z); 'mdm'
  draws its noise from one fixed key, so evals are comparable, and attends fully."""
  model = A3LM(model_config)
  batch_shard = shd.batch_sharding(mesh)

  def stats(p, b, g):
    g = jnp.zeros_like(g) if tc.objective == "mdm" else g
    return loss_stats(model, tc, p, b, g, jax.random.key(0))

  jitted = jax.jit(stats,
                   in_shardings=(shardings.params, batch_shard, batch_shard))

  def run(params, batch, groups):
    with shd.axis_rules():
      return jitted(params, batch, groups)

  return run
