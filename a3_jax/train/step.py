"""The pure loss and the jitted, sharded train and eval steps.

Randomness enters only through `key = fold_in(seed_key, step)`, so a resumed run needs
no saved key. The groupings of the A3 stages are a traced function of the step
(`lax.switch`), so those stages change without recompiling; a 'causal' stage is another
objective and another program, chosen on the host (see make_train_step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from a3_jax import attention, mdm
from a3_jax import sharding as shd
from a3_jax.config import ModelConfig
from a3_jax.grouping import Curriculum, stage_groups
from a3_jax.loss import grouped_nll, loss_weights, next_token_weights
from a3_jax.model import A3LM
from a3_jax.teacher_forced import predictions
from a3_jax.train.config import TrainConfig
from a3_jax.train.state import TrainState, learning_rate_schedule, make_optimizer


def batch_groups(curriculum: Curriculum, step, key, batch, given_rate: float = 0.0):
  """Group ids of the batch's rows for the stage that `step` is in; fine-tuning rows
  (with `roles`) put the prompt, and each response token with probability
  `given_rate`, in group 0 (grouping.response_groups)."""
  stage = curriculum.stage_index(step)
  return stage, stage_groups(curriculum, stage, key, batch["segment_ids"], batch["positions"],
                             batch.get("roles"), given_rate)


def loss_stats(model: A3LM, tc: TrainConfig, params, batch, groups_BxT, key=None,
               causal: bool = False):
  """Summed loss statistics (see loss.grouped_nll) of one batch and grouping.

  batch: tokens, segment_ids, positions [B, T] int32, and roles on fine-tuning rows
  (only response tokens outside group 0 are scored). key: the step's key, from
  which objective 'mdm' draws its noise (the grouping then gives its attention
  groups: mdm.anneal_groups, all 0 = full attention). causal (objective 'a3', a
  'causal' curriculum stage): train the content stream as a causal LM instead.
  """
  if tc.objective == "mdm":
    return mdm.loss_stats(model, tc, params, batch, key, groups_BxT)
  if tc.objective == "ar" or causal:
    return _causal_stats(model, tc, params, batch)
  return _a3_stats(model, tc, params, batch, groups_BxT)


def _causal_stats(model: A3LM, tc: TrainConfig, params, batch):
  """Next-token loss of the content stream (the causal LM)."""
  tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
  logits, targets = predictions(model, params, tokens, pos, seg, pos, head="content")
  weights = next_token_weights(seg, batch.get("roles"))
  return grouped_nll(logits, targets, weights, tc.z_loss)


def _a3_stats(model: A3LM, tc: TrainConfig, params, batch, groups_BxT):
  """The grouped loss of the query stream (the A3 objective)."""
  tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
  logits, targets = predictions(model, params, tokens, groups_BxT, seg, pos)
  weights = loss_weights(groups_BxT, seg, tc.count_first_group, batch.get("roles"))
  return grouped_nll(logits, targets, weights, tc.z_loss)


def loss_fn(model: A3LM, tc: TrainConfig, params, batch, groups_BxT):
  """Mean NLL per counted token (+ z-loss); returns (loss, summed stats)."""
  stats = loss_stats(model, tc, params, batch, groups_BxT)
  count = jnp.maximum(stats["count"], 1.0)
  return (stats["nll"] + stats["z"]) / count, stats


def _accumulated_grads(model, tc, params, batch, groups_BxT, key, causal: bool):
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
  """(state, batch, seed_key, step=None) -> (state, metrics), state donated.

  One compiled program per objective: with a 'causal' curriculum stage (objective
  'a3'), its steps and the A3 stages' steps are two programs, each compiled on first
  use, and the host picks one from `step` (the state's step; pass it to spare the
  device sync of reading state.step). A gradient through a `lax.cond` of the two would
  keep both branches' residuals. `run.program(causal)` is the jitted program (AOT
  lowering); `run.jitted` the A3 (or the objective's only) one.

  A step whose loss, gradient norm or updated params are not finite keeps the old params and
  optimizer state (a select inside the step: no extra host sync) and reports
  metrics['nonfinite'] = 1; the step counter advances either way.
  """
  model = A3LM(model_config)
  tx = make_optimizer(tc)
  schedule = learning_rate_schedule(tc)

  def step_fn(state: TrainState, batch, seed_key, causal: bool):
    key = jax.random.fold_in(seed_key, state.step)
    stage, groups = batch_groups(curriculum, state.step, key, batch, tc.sft_given_rate)
    if tc.objective == "mdm":  # the curriculum's groups become the annealed attention
      groups = mdm.anneal_groups(state.step, tc.mdm_anneal_steps, batch["segment_ids"],
                                 batch["positions"], jax.random.fold_in(key, 1))
    grads, stats = _accumulated_grads(model, tc, state.params, batch, groups, key, causal)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    count = jnp.maximum(stats["count"], 1.0)
    loss, grad_norm = (stats["nll"] + stats["z"]) / count, optax.tree.norm(grads)
    # The updated params too (an lr or update that overflows): still one flag, no host sync.
    params_finite = jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite
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
  programs = {}
  split = tc.objective == "a3" and curriculum.has_causal

  def program(causal: bool):
    if causal not in programs:
      programs[causal] = jax.jit(lambda s, b, k: step_fn(s, b, k, causal),
                                 in_shardings=(shardings, batch_shard, replicated),
                                 out_shardings=(shardings, replicated), donate_argnums=(0,))
    return programs[causal]

  def run(state, batch, seed_key, step: int | None = None):
    causal = split and curriculum.stage(
        int(state.step) if step is None else step).kind == "causal"
    with shd.axis_rules():
      return program(causal)(state, batch, seed_key)

  run.program = program
  run.programs = programs
  run.jitted = program(False)
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
