"""A tiny random transformers LLaMA and the two models' logits: the reference that
test_hf_parity.py and test_convert.py check conversions against."""

import json
import os

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

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
