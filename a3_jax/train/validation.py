"""Validation during training: exact NLL per token (and per character) of held-out
batches under fixed groupings."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from a3_jax import sharding as shd
from a3_jax.grouping import batch_groups_of, parse_strategy
from a3_jax.roles import RESPONSE

EVAL_GROUPINGS = ("ar", "perm:4")


@functools.lru_cache(maxsize=16)
def _drawer(strategy, mesh):
  """The jitted group sampler of a strategy (one per run, not one per validation)."""
  return jax.jit(functools.partial(batch_groups_of, strategy),
                 out_shardings=shd.batch_sharding(mesh))


def _scored(batch):
  """Where the eval scores a token: every non-padding one, or a fine-tuning row's response."""
  return batch["roles"] == RESPONSE if "roles" in batch else batch["segment_ids"] != 0


@jax.jit
def _chars(tokens_BxT, scored_BxT, lengths_V):
  """Characters the scored tokens of a (global) batch spell."""
  return jnp.sum(jnp.where(scored_BxT, lengths_V[tokens_BxT], 0))


def evaluate(eval_step, params, batches, seed_key, mesh, objective: str = "a3",
             char_lengths=None, causal_step=None, progress=None) -> dict:
  """Exact NLL per token of the validation batches under each EVAL_GROUPINGS entry
  (objective 'mdm': its NELBO per token, as nll_mdm), and per character
  (`nll_ar_per_char`, ...) where `char_lengths` [V] (tokenizer.token_char_lengths)
  is given: the same summed NLL over the characters the scored tokens spell.
  `causal_step` (a curriculum with a 'causal' stage): also the content stream's
  next-token NLL, as nll_causal (each document's first token unscored).

  Fine-tuning batches (with `roles`) score their responses alone, the prompt in group 0
  and the grouping over the response (no given subset): -log p(response | prompt).

  Groups are drawn for the global batch, and characters counted over it, so the
  result does not depend on the number of processes. `progress(done, total)` hears
  every batch pass.
  """
  out = {}
  chars = None
  sharded = [shd.shard_batch(b, mesh) for b in batches]  # global arrays
  if char_lengths is not None:  # every non-padding token is scored (count_first_group)
    lengths = jnp.asarray(char_lengths)
    chars = sum(int(_chars(b["tokens"], _scored(b), lengths)) for b in sharded)
  names = ("mdm",) if objective == "mdm" else EVAL_GROUPINGS
  total, done = len(names) * len(batches) + (len(batches) if causal_step else 0), 0
  for name in names:
    strategy = parse_strategy("ar" if name == "mdm" else name)  # mdm ignores the groups
    draw = _drawer(strategy, mesh)
    nll = count = 0.0
    for i, batch in enumerate(sharded):
      groups = draw(jax.random.fold_in(seed_key, i), batch["segment_ids"], batch["positions"],
                    batch.get("roles"))
      stats = eval_step(params, batch, groups)
      nll += float(stats["nll"])
      count += float(stats["count"])
      done += 1
      if progress is not None:
        progress(done, total)
    out[f"nll_{name.replace(':', '')}"] = nll / max(count, 1.0)
    if chars:
      out[f"nll_{name.replace(':', '')}_per_char"] = nll / chars
  if causal_step is not None:
    stats = []
    for b in sharded:
      stats.append(causal_step(params, b, b["positions"]))
      done += 1
      if progress is not None:
        progress(done, total)
    out["nll_causal"] = (sum(float(s["nll"]) for s in stats)
                         / max(sum(float(s["count"]) for s in stats), 1.0))
  out["eval_tokens"] = count
  return out


def eval_source(data: str, eval_data: str | None) -> tuple[str, str]:
  """(source spec, split) of validation data: --eval_data, else the validation split
  of --data where it has one (shakespeare, tfds), else --data itself."""
  if eval_data:
    return eval_data, "train"
  if data.startswith(("text:", "arrayrecord:", "parquet:", "jsonl:", "mix:", "sft:")):
    print(f"warning: --data={data} has no validation split and --eval_data is unset: "
          "validation metrics are measured on training files", flush=True)
    return data, "train"
  if data.startswith("tfds:") and data.count(":") >= 2:
    return data, "train"  # an explicit split: make_source reads it from the spec
  return data, "validation"
