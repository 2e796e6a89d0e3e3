"""A tiny random transformers LLaMA through a3-convert and back: same logits both ways.

`make_hf_llama` is also used by test_convert.py.
"""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from a3_jax.cli import convert as cli
from a3_jax.convert.hf_export import export_hf
from a3_jax.convert.hf_params import QUERY_EMBED_NAME
from a3_jax.convert.loader import load_pretrained
from a3_jax.model import A3LM

VOCAB = 97
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8}


def make_hf_llama(path, *, tied=False, llama3=False, seed=0, **overrides):
  """Saves a random GQA LlamaForCausalLM (4 heads, 2 KV heads) + a word-level tokenizer to path."""
  fields = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                rope_theta=5e5 if llama3 else 1e4, rope_scaling=LLAMA3 if llama3 else None,
                tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
  fields.update(overrides)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).eval()
  with torch.no_grad():  # HF initialises norms to 1; random scales catch a swapped norm
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.uniform_(0.5, 1.5)
  model.save_pretrained(path)
  tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "w1", "eos_token": "w2"}, f)
  return model


def hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(ids))).logits.float().numpy()


def content_logits(params, config, ids):
  groups = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
  out = A3LM(config).apply(params, ids, groups, streams="content")
  return np.asarray(out["content"])


IDS = np.random.default_rng(1).integers(0, VOCAB, (2, 16))
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

