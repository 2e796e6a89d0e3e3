"""Reading pretrained LLaMA checkpoints: HF variants, GGUF, sharded loading, bad input."""

import json
import os
import re
import subprocess
import sys

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers

from a3_jax import sharding
from a3_jax.config import RopeScaling
from a3_jax.cli import convert as cli
from a3_jax.convert import hf_params
from a3_jax.convert.gguf_file import _factors, llama3_scaling_from_factors
from a3_jax.convert.hf_dir import HFDir
from a3_jax.convert.loader import load_pretrained, read_config
from a3_jax.errors import UserError
from a3_jax.tokenizer import JsonTokenizer, load_tokenizer
from hf_reference import IDS, LLAMA3, content_logits, hf_logits, make_hf_llama

# --- Hugging Face directories -------------------------------------------------------


def test_transformers_4_and_5_rope_keys_give_one_config():
  base = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)
  v4 = dict(base, rope_theta=5e5, rope_scaling=dict(LLAMA3))
  v5 = dict(base, rope_parameters=dict(LLAMA3, rope_theta=5e5))
  assert hf_params.config_from_hf(v4) == hf_params.config_from_hf(v5)
  assert hf_params.config_from_hf(v5).rope_scaling == RopeScaling(4.0, 1.0, 4.0, 8)
  plain5 = dict(base, rope_parameters={"rope_type": "default", "rope_theta": 1e5})
  assert hf_params.config_from_hf(plain5).rope_theta == 1e5
  assert hf_params.config_from_hf(plain5).rope_scaling is None


def test_many_safetensors_files_with_an_index(tmp_path):
  model = make_hf_llama(str(tmp_path))
  for f in tmp_path.glob("*.safetensors"):
    f.unlink()
  model.save_pretrained(str(tmp_path), max_shard_size="40KB")
  assert len(list(tmp_path.glob("*.safetensors"))) > 1
  assert (tmp_path / "model.safetensors.index.json").exists()
  params, config, _ = load_pretrained(f"hf:{tmp_path}")
  np.testing.assert_allclose(content_logits(params, config, IDS), hf_logits(model, IDS),
                             atol=1e-4, rtol=0)


def test_bfloat16_checkpoint(tmp_path):
  model = make_hf_llama(str(tmp_path / "f32"))
  model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (tmp_path / "bf16" / name).write_bytes((tmp_path / "f32" / name).read_bytes())
  params, config, _ = load_pretrained(f"hf:{tmp_path / 'bf16'}")
  assert params["params"]["embed"].dtype == np.float32
  np.testing.assert_array_equal(params["params"]["embed"],
                                model.model.embed_tokens.weight.detach().float().numpy())
  np.testing.assert_allclose(content_logits(params, config, IDS), hf_logits(model.float(), IDS),
                             atol=1e-4, rtol=0)
  as_bf16, _, _ = load_pretrained(f"hf:{tmp_path / 'bf16'}", param_dtype="bfloat16")
  assert as_bf16["params"]["layers"]["attn"]["q_proj"].dtype == np.dtype("bfloat16")


def test_sharded_load_reads_only_each_devices_slice(tmp_path, monkeypatch):
  make_hf_llama(str(tmp_path))
  whole, config, _ = load_pretrained(f"hf:{tmp_path}")
  reads = []
  original = HFDir.read

  def spy(self, name, index):
    out = original(self, name, index)
    reads.append((name, out.shape))
    return out

  monkeypatch.setattr(HFDir, "read", spy)
  mesh = sharding.make_mesh("fsdp:2,tensor:4")
  params, _, _ = load_pretrained(f"hf:{tmp_path}", mesh=mesh)
  q = params["params"]["layers"]["attn"]["q_proj"]  # [L, D, N, H] = [2, 64, 4, 16]
  assert q.sharding.spec == sharding.logical_to_spec(
      ("layers", "embed", "q_heads", "head_dim"), q.shape, mesh)
  assert {s.data.shape for s in q.addressable_shards} == {(2, 32, 1, 16)}
  # One head of rows (16 of 64) and half the columns (32 of 64) per read: never whole.
  assert {shape for name, shape in reads if "q_proj" in name} == {(16, 32)}
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(got, want)


def test_query_vector_starts_small_and_fixed(tmp_path):
  make_hf_llama(str(tmp_path))
  a, config, _ = load_pretrained(f"hf:{tmp_path}")
  b, _, _ = load_pretrained(f"hf:{tmp_path}")
  q = np.asarray(a["params"]["query_embed"])
  np.testing.assert_array_equal(q, b["params"]["query_embed"])
  assert 0.5 * config.query_init_scale < q.std() < 2 * config.query_init_scale


# --- GGUF ---------------------------------------------------------------------------

GGUF_FIELDS = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                   max_position_embeddings=256, rope_theta=500.0, rms_norm_eps=1e-5,
                   rope_scaling=dict(LLAMA3, original_max_position_embeddings=64))


def _llama_cpp_rope_factors(theta, dim, s):
  """convert_hf_to_gguf.py's llama3 `rope_freqs`, written independently of a3_jax."""
  freqs = 1.0 / (theta ** (np.arange(0, dim, 2) / dim))
  low_wl = s["original_max_position_embeddings"] / s["low_freq_factor"]
  high_wl = s["original_max_position_embeddings"] / s["high_freq_factor"]
  out = []
  for freq in freqs:
    wl = 2 * np.pi / freq
    if wl < high_wl:
      out.append(1.0)
    elif wl > low_wl:
      out.append(s["factor"])
    else:
      smooth = ((s["original_max_position_embeddings"] / wl - s["low_freq_factor"])
                / (s["high_freq_factor"] - s["low_freq_factor"]))
      out.append(1 / ((1 - smooth) / s["factor"] + smooth))
  return np.asarray(out, np.float32)


def _byte_level_vocab():
  from transformers.convert_slow_tokenizer import bytes_to_unicode
  tokens = [bytes_to_unicode()[b] for b in range(256)] + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
  merges = ["Ġ t", "h e", "Ġt he"]
  return tokens, merges


def write_gguf(path, model, fields, arch="llama"):
  """Writes `model` the way llama.cpp does: Q8_0 matrices, permuted Q/K rows, rope_freqs."""
  n, k, h = fields["num_attention_heads"], fields["num_key_value_heads"], fields["head_dim"]
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(fields["num_hidden_layers"])
  w.add_context_length(fields["max_position_embeddings"])
  w.add_embedding_length(fields["hidden_size"])
  w.add_feed_forward_length(fields["intermediate_size"])
  w.add_head_count(n)
  w.add_head_count_kv(k)
  w.add_key_length(h)
  w.add_value_length(h)
  w.add_rope_dimension_count(h)
  w.add_rope_freq_base(fields["rope_theta"])
  w.add_layer_norm_rms_eps(fields["rms_norm_eps"])
  w.add_vocab_size(fields["vocab_size"])
  tokens, merges = _byte_level_vocab()
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens)
  w.add_token_merges(merges)
  w.add_token_types([1] * (len(tokens) - 1) + [3])
  w.add_bos_token_id(len(tokens) - 1)
  w.add_eos_token_id(len(tokens) - 1)

  def permute(x, heads):  # llama.cpp's convert_hf_to_gguf.LlamaModel.permute
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
  layer_names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  state = {}
  for name, t in model.state_dict().items():
    if name == "lm_head.weight" and model.config.tie_word_embeddings:
      continue
    x = t.float().numpy()
    if x.ndim == 2:  # what the model "really" holds is the dequantized matrix
      x = gguf.quants.dequantize(gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                                 gguf.GGMLQuantizationType.Q8_0)
    state[name] = torch.tensor(x)
    if name.startswith("model.layers."):
      i, rest = name[len("model.layers."):].split(".", 1)
      out_name = f"blk.{i}.{layer_names[rest.rsplit('.', 1)[0]]}.weight"
    else:
      out_name = names[name]
    if out_name.endswith("attn_q.weight"):
      x = permute(x, n)
    elif out_name.endswith("attn_k.weight"):
      x = permute(x, k)
    if x.ndim == 2:
      w.add_tensor(out_name, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                   raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      w.add_tensor(out_name, x)
  w.add_tensor("rope_freqs.weight",
               _llama_cpp_rope_factors(fields["rope_theta"], h, fields["rope_scaling"]))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  model.load_state_dict(state, strict=False)  # tied lm_head follows the embedding


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_dequantizes_unpermutes_and_recovers_llama3_rope(tmp_path, tied):
  fields = dict(GGUF_FIELDS, tie_word_embeddings=tied)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).eval()
  write_gguf(tmp_path / "m.gguf", model, fields)
  params, config, tokenizer = load_pretrained(f"gguf:{tmp_path / 'm.gguf'}")
  assert config.tie_embeddings == tied
  assert config.head_dim == 32 and config.num_kv_heads == 2
  assert config.rope_scaling == RopeScaling(4.0, 1.0, 4.0, 64)
  ids = np.random.default_rng(2).integers(0, 260, (2, 24))
  np.testing.assert_allclose(content_logits(params, config, ids), hf_logits(model, ids),
                             atol=1e-4, rtol=0)
  text = "the theme then"
  assert tokenizer.decode(tokenizer.encode(text)) == text
  assert 258 in tokenizer.encode(text)  # the "Ġthe" merge
  assert tokenizer.eos_id == tokenizer.bos_id == 259 and tokenizer.pad_id == -1


@pytest.mark.parametrize("theta,dim,scaling", [
    (5e5, 128, RopeScaling(8.0, 1.0, 4.0, 8192)),   # Llama 3.1
    (5e5, 64, RopeScaling(32.0, 1.0, 4.0, 8192)),   # Llama 3.2 1B
    (5e5, 128, RopeScaling(16.0, 1.0, 2.0, 4096)),  # not the standard one: found by the fit
])
def test_llama3_scaling_is_recovered_from_rope_freqs(theta, dim, scaling):
  factors = _factors(scaling, theta, dim)
  got = llama3_scaling_from_factors(factors, theta, dim, 8192)
  np.testing.assert_allclose(_factors(got, theta, dim), factors, rtol=1e-6)
  assert got.factor == scaling.factor
  with pytest.raises(ValueError, match="not a llama3 RoPE scaling"):
    llama3_scaling_from_factors(factors[::-1].copy(), theta, dim, 8192)


# --- tokenizers ---------------------------------------------------------------------


def test_json_tokenizer_keeps_special_ids_through_save(tmp_path):
  make_hf_llama(str(tmp_path / "hf"))
  tok = load_tokenizer(str(tmp_path / "hf" / "tokenizer.json"))
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, -1, 97)
  os.makedirs(tmp_path / "saved")
  again = JsonTokenizer.from_file(tok.save(str(tmp_path / "saved")))
  assert (again.bos_id, again.eos_id, again.pad_id) == (1, 2, -1)
  assert again.encode("w3 w4") == [3, 4] and again.decode([3, 4]) == "w3 w4"


def test_sentencepiece_tokenizer_model_is_preferred(tmp_path):
  from a3_jax.data.corpus import asset_path
  make_hf_llama(str(tmp_path))
  (tmp_path / "tokenizer.model").write_bytes(asset_path("shakespeare.model").read_bytes())
  tok = HFDir(str(tmp_path)).tokenizer()  # the directory's own, before any check
  assert tok.vocab_size == 2048 and tok.decode(tok.encode("To be, or not")) == "To be, or not"
  with pytest.raises(UserError, match="has 2048 ids but model hf:"):  # the model has 97
    load_pretrained(f"hf:{tmp_path}")


# --- bad input ----------------------------------------------------------------------


def _edit_config(path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def _bad_inputs(tmp_path):
  """(spec, message fragment) for each kind of bad input."""
  cases = []
  (tmp_path / "empty").mkdir()
  cases.append(("hf:" + str(tmp_path / "empty"), "no config.json"))
  (tmp_path / "notmodel").mkdir()
  (tmp_path / "notmodel" / "config.json").write_text('{"learning_rate": 0.1}')
  cases.append(("hf:" + str(tmp_path / "notmodel"), "not a Hugging Face model directory"))
  make_hf_llama(str(tmp_path / "qwen"))
  _edit_config(tmp_path / "qwen", architectures=["Qwen2ForCausalLM"], model_type="qwen2")
  cases.append(("hf:" + str(tmp_path / "qwen"), "unsupported architecture Qwen2ForCausalLM"))
  make_hf_llama(str(tmp_path / "shape"))
  _edit_config(tmp_path / "shape", intermediate_size=96)
  cases.append(("hf:" + str(tmp_path / "shape"),
                r"'model.layers.0.mlp.gate_proj.weight' has shape \(128, 64\), config expects \(96, 64\)"))
  make_hf_llama(str(tmp_path / "linear"))
  _edit_config(tmp_path / "linear", rope_scaling={"rope_type": "linear", "factor": 2.0},
               rope_parameters=None)
  cases.append(("hf:" + str(tmp_path / "linear"), "unsupported RoPE scaling type 'linear'"))
  make_hf_llama(str(tmp_path / "notok"))
  os.remove(tmp_path / "notok" / "tokenizer.json")
  cases.append(("hf:" + str(tmp_path / "notok"), "no tokenizer.model or tokenizer.json"))
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  cases.append(("gguf:" + str(tmp_path / "junk.gguf"), "not a readable GGUF file"))
  w = gguf.GGUFWriter(str(tmp_path / "qwen.gguf"), "qwen2")
  w.add_block_count(1)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  cases.append(("gguf:" + str(tmp_path / "qwen.gguf"), "unsupported GGUF architecture 'qwen2'"))
  return cases


def test_bad_input_raises_one_clear_value_error(tmp_path):
  for spec, message in _bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=message):
      load_pretrained(spec)
  with pytest.raises(ValueError, match="not an a3_jax export directory.*hf:"):
    read_config(str(tmp_path / "qwen"))


def _cli_error(capsys, *argv):
  """Runs a3-convert in-process; returns its stderr after checking exit code 2."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(list(argv))
  assert exit_info.value.code == 2
  return capsys.readouterr().err


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
  cases = _bad_inputs(tmp_path)
  capsys.readouterr()  # transformers' progress bars while building the cases
  for i, (spec, message) in enumerate(cases):
    out = tmp_path / f"out{i}"
    err = _cli_error(capsys, f"--from={spec}", f"--out={out}")
    assert err.count("\n") == 1 and err.startswith("a3-convert: error:"), err
    assert re.search(message, err), (message, err)
    assert not out.exists() and not (tmp_path / f"out{i}.partial").exists()
  make_hf_llama(str(tmp_path / "ok"))
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("keep me")
  assert "not empty" in _cli_error(capsys, f"--from=hf:{tmp_path / 'ok'}",
                                   f"--out={tmp_path / 'full'}")
  assert os.listdir(tmp_path / "full") == ["x"]
  assert _cli_error(capsys, f"--from=hf:{tmp_path / 'ok'}") == (
      "a3-convert: error: --from and --out are required\n")


def test_cli_as_a_program(tmp_path):
  (tmp_path / "empty").mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "a3_jax.cli.convert", f"--from=hf:{tmp_path / 'empty'}",
       f"--out={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      f"a3-convert: error: {tmp_path / 'empty'} is not a Hugging Face checkpoint directory "
      "(no config.json)"]
  assert not (tmp_path / "out").exists()
