"""The export format: what generation, evaluation and conversion read and write.

An export directory holds
  config.json      ModelConfig.to_json()
  params/          orbax StandardCheckpointer of the unboxed param pytree
  tokenizer.model  (or tokenizer.json) the tokenizer the model was trained with
  EXPORT           a marker written last, so a half-written export is never loaded

Writes go to a sibling temporary directory that is renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax.linen import meta

from a3_jax.atomic_file import read_json_object
from a3_jax.config import ModelConfig
from a3_jax.errors import UserError, is_disk_full

MARKER = "EXPORT"
TOKENIZER_NAMES = ("tokenizer.model", "tokenizer.json")
RUN_FLAGS = "flags.json"  # the a3-train flags of the run an export came from


def run_flags(path: str) -> dict:
  """The training flags saved with a run directory or an export ({} where none)."""
  candidate = os.path.join(path, RUN_FLAGS)
  if not os.path.isfile(candidate):
    return {}
  return read_json_object(candidate)


@contextlib.contextmanager
def staged_directory(out_dir: str, tokenizer_path: str | None):
  """Yields a temporary sibling of out_dir that is renamed into place on success
  and removed on any error, so out_dir is never left half-written."""
  from a3_jax.rundir import check_out_dir
  check_out_dir(out_dir)
  out_dir = os.path.abspath(out_dir)
  if tokenizer_path is not None and not os.path.isfile(tokenizer_path):
    raise UserError(f"tokenizer file {tokenizer_path} does not exist")
  tmp = out_dir + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)  # a stale one: an earlier run killed mid-write
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.exists(out_dir):
      os.rmdir(out_dir)
    os.rename(tmp, out_dir)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, Exception) and is_disk_full(e):
      raise UserError(f"{out_dir}: no space left on device while writing it; nothing was "
                      "written (free space or choose another place)") from None
    raise


def copy_tokenizer(tokenizer_path: str | None, directory: str) -> None:
  """Copies a tokenizer.model, or a tokenizer.json with the sibling
  tokenizer_config.json that names its special tokens."""
  if tokenizer_path is None:
    return
  is_json = tokenizer_path.endswith(".json")
  shutil.copyfile(tokenizer_path, os.path.join(
      directory, "tokenizer.json" if is_json else "tokenizer.model"))
  sidecar = os.path.join(os.path.dirname(tokenizer_path), "tokenizer_config.json")
  if is_json and os.path.isfile(sidecar):
    shutil.copyfile(sidecar, os.path.join(directory, "tokenizer_config.json"))


def save_export(out_dir: str, params: Any, config: ModelConfig,
                tokenizer_path: str | None, dtype: str | None = None,
                run_flags: dict | None = None) -> str:
  """Writes params (cast to `dtype` if given) + config + tokenizer to out_dir, and the
  training run's flags (RUN_FLAGS: seq_len, ...) where given."""
  params = meta.unbox(params)
  if dtype is not None:
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    config = config.replace(param_dtype=dtype)
  with staged_directory(out_dir, tokenizer_path) as tmp:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      f.write(config.to_json())
    # Synchronous: no orbax thread outlives a Ctrl-C to print its own traceback.
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
      ckptr.save(os.path.join(tmp, "params"), args=ocp.args.StandardSave(params))
    copy_tokenizer(tokenizer_path, tmp)
    if run_flags is not None:
      with open(os.path.join(tmp, RUN_FLAGS), "w") as f:
        json.dump(run_flags, f, indent=2)
    open(os.path.join(tmp, MARKER), "w").close()
  return os.path.abspath(out_dir)


def is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MARKER))


def load_config(path: str) -> ModelConfig:
  if not is_export(path):
    raise UserError(f"{path} is not an a3_jax export directory (no {MARKER} marker; "
                     "make one with a3-export or a3-convert)")
  config_path = os.path.join(path, "config.json")
  try:
    with open(config_path, encoding="utf-8") as f:
      return ModelConfig.from_json(f.read())
  except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
    raise UserError(f"export {path} is damaged: {config_path} is not a readable model config "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def tokenizer_file(path: str) -> str | None:
  for name in TOKENIZER_NAMES:
    candidate = os.path.join(path, name)
    if os.path.isfile(candidate):
      return candidate
  return None


def load_export(path: str, shardings: Any = None,
                param_dtype: str | None = None) -> tuple[Any, ModelConfig, str | None]:
  """Returns (params, config, tokenizer path or None).

  `shardings`: optional pytree of NamedShardings matching the params; each array
  is then read straight into its sharding (never whole on one device).
  `param_dtype`: read the params cast to it (the config says so), default as saved.
  """
  config = load_config(path)
  if param_dtype is not None:
    config = config.replace(param_dtype=param_dtype)
  ckpt = os.path.join(os.path.abspath(path), "params")
  with ocp.StandardCheckpointer() as ckptr:
    try:
      meta_tree = ckptr.metadata(ckpt).item_metadata
    except Exception as e:
      from a3_jax.checkpoint import describe_damage
      raise UserError(f"export {path} is damaged: params/: {describe_damage(ckpt, e)}") from None
    meta_tree = getattr(meta_tree, "tree", meta_tree)  # orbax >= 0.12 wraps it in TreeMetadata
    shape_tree = jax.tree.map(lambda m: m.shape, meta_tree,
                              is_leaf=lambda m: hasattr(m, "shape"))
    dtype = config.weight_dtype
    if shardings is None:
      target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), shape_tree,
                            is_leaf=lambda s: isinstance(s, tuple))
    else:
      target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s, dtype, sharding=sh),
                            shape_tree, shardings, is_leaf=lambda s: isinstance(s, tuple))
    try:
      params = ckptr.restore(ckpt, target)
    except Exception as e:  # a truncated or emptied params file: name it, no traceback
      from a3_jax.checkpoint import describe_damage
      raise UserError(f"export {path} is damaged: params/: {describe_damage(ckpt, e)}") from None
  return params, config, tokenizer_file(path)
