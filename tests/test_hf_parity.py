"""A tiny random transformers LLaMA through a3-convert and back: same logits both ways."""

import os

import numpy as np
import pytest
import torch
import transformers

from a3_jax.cli import convert as cli
from a3_jax.convert.hf_export import export_hf
from a3_jax.convert.hf_params import QUERY_EMBED_NAME
from a3_jax.convert.loader import load_pretrained
from hf_reference import IDS, content_logits, hf_logits, make_hf_llama

CASES = {"untied": dict(tied=False, llama3=False),
         "tied_llama3": dict(tied=True, llama3=True),
         "untied_llama3": dict(tied=False, llama3=True)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_and_export_back_keep_logits(case, tmp_path):
  hf_dir, export_dir, back_dir = (str(tmp_path / n) for n in ("hf", "export", "back"))
  model = make_hf_llama(hf_dir, **CASES[case])
  ref = hf_logits(model, IDS)

  assert cli.main([f"--from=hf:{hf_dir}", f"--out={export_dir}"]) == 0
  params, config, tokenizer = load_pretrained(export_dir)
  assert config.tie_embeddings == CASES[case]["tied"]
  assert (config.rope_scaling is not None) == CASES[case]["llama3"]
  np.testing.assert_allclose(content_logits(params, config, IDS), ref, atol=1e-4, rtol=0)
  assert tokenizer.encode("w5 w7 w96") == [5, 7, 96]

  export_hf(back_dir, params, config, os.path.join(export_dir, "tokenizer.json"))
  reloaded = transformers.LlamaForCausalLM.from_pretrained(back_dir, dtype=torch.float32)
  assert type(reloaded) is transformers.LlamaForCausalLM
  np.testing.assert_allclose(hf_logits(reloaded, IDS), ref, atol=1e-5, rtol=0)
  assert reloaded.config.tie_word_embeddings == CASES[case]["tied"]

  # The query vector travels as an extra tensor and comes back with hf:DIR.
  again, again_config, _ = load_pretrained(f"hf:{back_dir}")
  assert again_config == config
  np.testing.assert_array_equal(again["params"]["query_embed"], params["params"]["query_embed"])


def test_exported_query_vector_is_documented_and_shaped(tmp_path):
  make_hf_llama(str(tmp_path / "hf"))
  params, config, _ = load_pretrained(f"hf:{tmp_path / 'hf'}")
  export_hf(str(tmp_path / "back"), params, config)
  from safetensors.numpy import load_file
  state = load_file(str(tmp_path / "back" / "model.safetensors"))
  assert state[QUERY_EMBED_NAME].shape == (1, 1, config.d_model)
  assert QUERY_EMBED_NAME in (tmp_path / "back" / "README.md").read_text()


def test_bfloat16_export_loads_in_transformers(tmp_path):
  make_hf_llama(str(tmp_path / "hf"))
  params, config, _ = load_pretrained(f"hf:{tmp_path / 'hf'}")
  export_hf(str(tmp_path / "back"), params, config, dtype="bfloat16")
  reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "back"))
  assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
  np.testing.assert_array_equal(
      reloaded.model.embed_tokens.weight.detach().float().numpy(),
      np.asarray(params["params"]["embed"].astype("bfloat16"), np.float32))

