"""A Hugging Face LLaMA directory as a source of tensor slices.

The directory holds `config.json`, the weights as one `model.safetensors` or
several shards listed by `model.safetensors.index.json`, and a tokenizer. The
safetensors files are memory-mapped: `read` copies only the requested slice, so a
sharded load never holds a whole large tensor in host memory.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, which safetensors' numpy API needs
import numpy as np
from safetensors import safe_open

from a3_jax import export
from a3_jax.convert import hf_params
from a3_jax.tokenizer import load_hf_tokenizer
from a3_jax.errors import UserError

INDEX_NAME = "model.safetensors.index.json"


class HFDir:
  """Tensors, config and tokenizer of an HF LLaMA checkpoint directory."""

  def __init__(self, path: str):
    self.path = path
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
      raise UserError(f"{path} is not a directory")
    if not os.path.isfile(config_path):
      raise UserError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    try:
      with open(config_path, encoding="utf-8") as f:
        self.hf_config: dict[str, Any] = json.load(f)
    except UnicodeDecodeError as e:
      raise UserError(f"{config_path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:
      raise UserError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(self.hf_config, dict):
      raise UserError(f"{config_path} is not a JSON object")
    if export.is_export(path):
      raise UserError(f"{path} is an a3_jax export directory: pass it without 'hf:'")
    if "model_type" not in self.hf_config and "architectures" not in self.hf_config:
      raise UserError(f"{path} is not a Hugging Face model directory "
                       "(its config.json names no model_type or architectures)")
    hf_params.check_llama_config(self.hf_config)
    self._files = self._weight_files()
    self._handles: dict[str, Any] = {}

  def _weight_files(self) -> dict[str, str]:
    """Tensor name -> safetensors file, from the index or by listing every file."""
    index_path = os.path.join(self.path, INDEX_NAME)
    if os.path.isfile(index_path):
      try:
        with open(index_path, encoding="utf-8") as f:
          weight_map = json.load(f)["weight_map"]
      except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{index_path} is not a safetensors index ({e})") from None
      files = {name: os.path.join(self.path, file) for name, file in weight_map.items()}
      absent = sorted({f for f in files.values() if not os.path.isfile(f)})
      if absent:
        raise UserError(f"{INDEX_NAME} lists missing files: {absent}")
      return files
    paths = sorted(glob.glob(os.path.join(self.path, "*.safetensors")))
    if not paths:
      raise UserError(f"no *.safetensors weights in {self.path} "
                       "(PyTorch .bin checkpoints are not supported; re-save with safetensors)")
    files = {}
    for path in paths:
      with _safe_open(path) as f:
        files.update({name: path for name in f.keys()})
    return files

  def _handle(self, name: str):
    path = self._files[name]
    if path not in self._handles:
      self._handles[path] = _safe_open(path)
    return self._handles[path]

  def shape(self, name: str) -> tuple[int, ...] | None:
    if name not in self._files:
      return None
    return tuple(self._handle(name).get_slice(name).get_shape())

  def read(self, name: str, index: hf_params.Index) -> np.ndarray:
    return self._handle(name).get_slice(name)[index]

  def tokenizer(self):
    return load_hf_tokenizer(self.path, self.hf_config)


def _safe_open(path: str):
  """safe_open, with a truncated or damaged file named in a UserError."""
  try:
    return safe_open(path, framework="numpy")
  except Exception as e:  # safetensors raises its own SafetensorError
    raise UserError(f"{path} is not a readable safetensors file (truncated or damaged: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
