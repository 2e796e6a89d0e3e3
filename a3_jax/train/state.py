"""Train state and optimizer: AdamW behind a global-norm clip, the learning-rate
schedule, and states born sharded (from a key or around given params)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.linen import meta

from a3_jax import sharding as shd
from a3_jax.config import ModelConfig
from a3_jax.model import init_params
from a3_jax.train.config import TrainConfig


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


def boxed_state(model_config: ModelConfig, tc: TrainConfig, key) -> TrainState:
  """A fresh state whose params keep their logical-axis boxes (for shardings)."""
  params = init_params(model_config, key)
  opt_state = make_optimizer(tc).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def state_shardings(model_config: ModelConfig, tc: TrainConfig, mesh) -> TrainState:
  """NamedShardings of every leaf of the (unboxed) train state."""
  abstract = jax.eval_shape(lambda k: boxed_state(model_config, tc, k), jax.random.key(0))
  return shd.param_shardings(abstract, mesh)


def init_state(model_config: ModelConfig, tc: TrainConfig, key, mesh) -> TrainState:
  """A train state born sharded (never whole on one device)."""
  shardings = state_shardings(model_config, tc, mesh)
  with shd.axis_rules():
    return jax.jit(lambda k: meta.unbox(boxed_state(model_config, tc, k)),
                   out_shardings=shardings)(key)


def state_from_params(params, model_config: ModelConfig, tc: TrainConfig, mesh) -> TrainState:
  """A fresh train state (step 0, zero moments) around given (unboxed) params."""
  shardings = state_shardings(model_config, tc, mesh)
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(make_optimizer(tc).init, out_shardings=shardings.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
                    params=params, opt_state=opt_state)
