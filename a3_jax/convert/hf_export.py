"""Writing a3_jax params as a Hugging Face LLaMA directory.

The directory loads in transformers as a standard `LlamaForCausalLM` whose
logits are our content stream (the AR model):

  config.json        LlamaConfig (RoPE under both the 4.x and the 5.x keys)
  model.safetensors  every LLaMA weight in HF layout, in the params' dtype, plus
                     `model.query_embed` [1, 1, D]: the learned query-stream start
                     vector (A3's only extra parameter). transformers ignores it
                     (it logs it as an unused weight); `hf:DIR` loading keeps it.
  tokenizer.*        the tokenizer, if given (tokenizer.json with its
                     tokenizer_config.json, or a sentencepiece tokenizer.model)
  README.md          this layout, for whoever finds the directory
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_dtypes  # noqa: F401  registers bfloat16 with numpy for safetensors
import numpy as np
from flax.linen import meta
from safetensors.numpy import save_file

from a3_jax.config import ModelConfig
from a3_jax.convert import hf_params
from a3_jax.tokenizer import load_tokenizer
from a3_jax.export import copy_tokenizer, staged_directory
from a3_jax.errors import UserError

_README = """\
# A3 (any-order any-subset autoregressive) LLaMA, exported by a3_jax

`transformers.LlamaForCausalLM.from_pretrained(this_dir)` loads the content
stream: a standard causal LLaMA. `model.safetensors` also holds
`model.query_embed` (shape [1, 1, hidden_size]), the learned start vector of
A3's query stream; transformers reports it as an unused weight. To use the
model for any-order generation, load it back with a3_jax (`hf:this_dir`).
"""


def export_hf(out_dir: str, params: Any, config: ModelConfig,
              tokenizer_path: str | None = None, dtype: str | None = None) -> str:
  """Writes params + config (+ tokenizer) as an HF LLaMA directory; returns its path.

  Weights are written in `dtype` if given, else in config.param_dtype. Like
  save_export: refuses a non-empty out_dir and writes to a sibling temporary
  directory that is renamed into place at the end.
  """
  if dtype is not None:
    config = config.replace(param_dtype=dtype)
  if tokenizer_path is not None and not os.path.isfile(tokenizer_path):
    raise UserError(f"tokenizer file {tokenizer_path} does not exist")
  tokenizer = None if tokenizer_path is None else load_tokenizer(tokenizer_path)
  weight_dtype = np.dtype(config.weight_dtype)
  state = {name: np.ascontiguousarray(w.astype(weight_dtype)) for name, w in
           hf_params.params_to_hf(jax.device_get(meta.unbox(params)), config).items()}
  hf_config = hf_params.config_to_hf(config)
  if tokenizer is not None:
    hf_config.update({f"{role}_token_id": (i if i >= 0 else None) for role, i in
                      (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id),
                       ("pad", tokenizer.pad_id))})
  with staged_directory(out_dir, tokenizer_path) as tmp:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)
    save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    copy_tokenizer(tokenizer_path, tmp)
    with open(os.path.join(tmp, "README.md"), "w") as f:
      f.write(_README)
  return os.path.abspath(out_dir)
