"""Pretrained weights in: `hf:DIR`, `gguf:FILE` or an a3_jax export DIR.

Every param leaf is built with `jax.make_array_from_callback`, whose callback
reads (and dequantizes, transposes, unpermutes) only the slice that one device
holds, so a sharded model is never whole on one device, nor in host memory.

    config = read_config("hf:/ckpt/Llama-3.2-1B")      # cheap: build mesh/shardings from it
    params, config, tokenizer = load_pretrained("hf:/ckpt/Llama-3.2-1B", mesh=mesh)

A checkpoint without a query-stream vector (any AR LLaMA) gets a small random
one (`hf_params.initial_query_embed`); one exported by a3_jax keeps its own.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
from flax.linen import meta

from a3_jax import export
from a3_jax.config import ModelConfig
from a3_jax.convert import hf_params
from a3_jax.tokenizer import check_fits, load_tokenizer
from a3_jax.model import init_params
from a3_jax.errors import UserError

_KINDS = ("hf", "gguf")


def parse_spec(spec: str) -> tuple[str, str]:
  """'hf:DIR' | 'gguf:FILE' | 'DIR' (an export) -> (kind, path)."""
  kind, sep, path = spec.partition(":")
  if sep and kind in _KINDS:
    if not path:
      raise UserError(f"checkpoint spec {spec!r} names no path")
    return kind, path
  return "export", spec


def open_checkpoint(spec: str):
  """The HFDir or GGUFFile behind an 'hf:' or 'gguf:' spec (the last one opened is
  reused while its file is unchanged: opening a GGUF parses its whole vocabulary)."""
  kind, path = parse_spec(spec)
  stamp = tuple(os.stat(f).st_mtime_ns for f in (path, os.path.join(path, "config.json"))
                if os.path.exists(f))
  return _open_checkpoint(spec, stamp)


@functools.lru_cache(maxsize=1)
def _open_checkpoint(spec: str, stamp):
  del stamp  # part of the cache key only
  kind, path = parse_spec(spec)
  if kind == "hf":
    from a3_jax.convert.hf_dir import HFDir
    return HFDir(path)
  if kind == "gguf":
    from a3_jax.convert.gguf_file import GGUFFile
    return GGUFFile(path)
  raise UserError(f"{spec!r} is not an 'hf:DIR' or 'gguf:FILE' checkpoint spec")


def _export_config(path: str) -> ModelConfig:
  if export.is_export(path):
    return export.load_config(path)  # a damaged export says so itself
  try:
    return export.load_config(path)
  except ValueError as e:
    raise UserError(f"{e} (for a Hugging Face directory or GGUF file, write hf:{path} "
                     f"or gguf:{path})") from None


def read_config(spec: str, param_dtype: str | None = None) -> ModelConfig:
  """The ModelConfig of a checkpoint, without reading its weights."""
  overrides = {} if param_dtype is None else {"param_dtype": param_dtype}
  if parse_spec(spec)[0] == "export":
    return _export_config(parse_spec(spec)[1]).replace(**overrides)
  return hf_params.config_from_hf(open_checkpoint(spec).hf_config, **overrides)


def _abstract_params(config: ModelConfig) -> Any:
  """Boxed ShapeDtypeStructs of A3LM's params (no compute, no memory)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def default_shardings(config: ModelConfig, mesh: jax.sharding.Mesh | None = None) -> Any:
  """Param shardings: the logical rules of a3_jax.sharding on `mesh`, or the default device."""
  abstract = _abstract_params(config)
  if mesh is not None:
    from a3_jax.sharding import param_shardings
    return param_shardings(abstract, mesh)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda _: device, meta.unbox(abstract))


def _shardings_for(config: ModelConfig, mesh, shardings) -> Any:
  """The given shardings, checked against the params' tree, or default_shardings."""
  if shardings is None:
    return default_shardings(config, mesh)
  expected = jax.tree.structure(meta.unbox(_abstract_params(config)))
  if jax.tree.structure(shardings) != expected:
    raise UserError(f"shardings do not match the params of this config: got "
                     f"{jax.tree.structure(shardings)}, expected {expected}")
  return shardings


def _sharded_leaf(shape, sharding, dtype, read_slice) -> jax.Array:
  """One global array; `read_slice(index)` is called once per distinct shard."""
  cache: dict[tuple, np.ndarray] = {}

  def callback(index):
    key = tuple((s.start, s.stop) for s in index)
    if key not in cache:
      cache[key] = read_slice(index)
    return cache[key]

  return jax.make_array_from_callback(tuple(shape), sharding, callback, dtype=dtype)


def _load_source(source, config: ModelConfig, shardings: Any, progress=None) -> dict[str, Any]:
  dtype = np.dtype(config.weight_dtype)
  params: dict[str, Any] = {}
  leaves = hf_params.hf_leaves(config)
  if progress is not None:
    progress(0, len(leaves))
  for i, (path, leaf) in enumerate(leaves.items()):
    sharding = shardings["params"]
    node = params
    for key in path[:-1]:
      node, sharding = node.setdefault(key, {}), sharding[key]
    node[path[-1]] = _sharded_leaf(
        leaf.shape, sharding[path[-1]], dtype,
        lambda index, leaf=leaf: hf_params.read_leaf(leaf, index, source.read, dtype))
    if progress is not None:
      progress(i + 1, len(leaves))
  name = hf_params.QUERY_EMBED_NAME
  if source.shape(name) is not None:
    query_embed = source.read(name, (slice(None),) * len(source.shape(name))).reshape(-1)
  else:
    query_embed = hf_params.initial_query_embed(config)
  if query_embed.shape != (config.d_model,):
    raise UserError(f"tensor {name!r} has {query_embed.size} values, "
                     f"config expects {config.d_model}")
  params["query_embed"] = _sharded_leaf(
      (config.d_model,), shardings["params"]["query_embed"], dtype,
      lambda index: np.asarray(query_embed[index], dtype))
  return {"params": params}


def load_pretrained(spec: str, mesh: jax.sharding.Mesh | None = None, shardings: Any = None,
                    param_dtype: str | None = None, progress=None) -> tuple[Any, ModelConfig, Any]:
  """(params, config, tokenizer) of 'hf:DIR', 'gguf:FILE' or an export DIR.

  shardings: a pytree of Shardings matching the unboxed params ({'params': ...});
  without it, the rules of a3_jax.sharding on `mesh`, or the default device.
  param_dtype: the dtype to hold weights in (default: float32; exports keep theirs).
  The tokenizer follows the interface in a3_jax.convert.tokenizer (None if an
  export has none). `progress(done, total)` hears each parameter read from an
  'hf:'/'gguf:' checkpoint (each holds every layer's slice of one weight).
  """
  kind, path = parse_spec(spec)
  if kind == "export":
    config = read_config(spec)
    if shardings is not None or mesh is not None:
      shardings = _shardings_for(config, mesh, shardings)
    params, config, tokenizer_path = export.load_export(path, shardings, param_dtype)
    tokenizer = None if tokenizer_path is None else load_tokenizer(tokenizer_path)
    check_fits(tokenizer, config.vocab_size, f"model {spec}")
    return params, config, tokenizer
  source = open_checkpoint(spec)
  overrides = {} if param_dtype is None else {"param_dtype": param_dtype}
  config = hf_params.config_from_hf(source.hf_config, **overrides)
  hf_params.check_shapes(source.shape, config)
  tokenizer = source.tokenizer()  # before the weights: a bad tokenizer fails fast
  check_fits(tokenizer, config.vocab_size, f"model {spec}")
  shardings = _shardings_for(config, mesh, shardings)
  return _load_source(source, config, shardings, progress), config, tokenizer


def has_query_vector(spec: str) -> bool:
  """Whether an 'hf:'/'gguf:' checkpoint carries a query-stream vector (one a3_jax wrote);
  an AR LLaMA has none, so its query stream was never trained."""
  return open_checkpoint(spec).shape(hf_params.QUERY_EMBED_NAME) is not None


def load_model(spec: str, tokenizer_path: str | None = None):
  """(params, config, tokenizer) of a checkpoint `hf:DIR | gguf:FILE | EXPORT_DIR`.

  The one loader of generation, evaluation and conversion: `tokenizer_path`
  replaces the checkpoint's own tokenizer; a checkpoint without one needs it.
  """
  params, config, tokenizer = load_pretrained(spec)
  if tokenizer_path:
    if not os.path.isfile(tokenizer_path):
      raise UserError(f"tokenizer file {tokenizer_path} does not exist")
    tokenizer = load_tokenizer(tokenizer_path)
  if tokenizer is None:
    raise UserError(f"checkpoint {spec} has no tokenizer: pass --tokenizer")
  check_fits(tokenizer, config.vocab_size, f"model {spec}")
  return params, config, tokenizer
