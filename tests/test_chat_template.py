"""Chat templates render as transformers renders them: the template function
apply_chat_template calls, for the SmolLM2 GGUF's template and a LLaMA-3-style one;
and (slow) the GGUF tokenizer end to end against apply_chat_template, text and ids."""

import os

import pytest

from a3_jax import chat_template
from a3_jax.errors import UserError
from cli_helpers import smollm2_gguf

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
     {"role": "assistant", "content": " 6 \n"}],
    [{"role": "user", "content": "Café, naïve: \"quotes\" & <tags>"},
     {"role": "assistant", "content": "ok"}],
]
# The SmolLM2-135M-Instruct GGUF's template (tokenizer.chat_template; the slow test reads
# it from the file), and the shape of LLaMA-3-Instruct's: bos_token, strip, loop controls, raise_exception, tojson.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_STYLE = (
    "{{- bos_token }}{% for message in messages %}{% if message['role'] not in "
    "['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + message['role']) }}"
    "{% endif %}{% if message['content'] == 'skip' %}{% continue %}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}\n"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    "{% if tools is not none %}{{ tools | tojson }}{% endif %}")


def reference(template, messages, add_generation_prompt, **special):
  utils = pytest.importorskip("transformers.utils.chat_template_utils")
  rendered, _ = utils.render_jinja_template(conversations=[messages], chat_template=template,
                                            add_generation_prompt=add_generation_prompt,
                                            **special)
  return rendered[0]


@pytest.mark.parametrize("which", ["smollm2", "llama3"])
@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_renders_as_transformers(which, messages, add_generation_prompt):
  template = SMOLLM2 if which == "smollm2" else LLAMA3_STYLE
  special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
  ours = chat_template.render(template, messages, add_generation_prompt=add_generation_prompt,
                              special_tokens=special)
  assert ours == reference(template, messages, add_generation_prompt, **special)
  assert ("<|im_start|>" in ours) == (which == "smollm2")


def test_template_errors_are_user_errors():
  with pytest.raises(UserError, match="bad role tool"):
    chat_template.render(LLAMA3_STYLE, [{"role": "tool", "content": "x"}])
  with pytest.raises(UserError, match="not valid Jinja"):
    chat_template.render("{% for %}", [])


@pytest.mark.slow
def test_gguf_tokenizer_matches_apply_chat_template(monkeypatch):
  """Our GGUF tokenizer's chat records against the reference tokenizer's
  apply_chat_template: the prompt (with the assistant header), the whole conversation, and
  --chat's user prompt, as text and as ids. One ~20 s load serves both sides."""
  transformers = pytest.importorskip("transformers")
  from a3_jax.convert.gguf_file import GGUFFile
  from a3_jax.data import sft
  path = smollm2_gguf()
  reference_tok = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path))
  monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                      lambda *a, **k: reference_tok)
  ours = GGUFFile(path).tokenizer()
  assert ours.chat_template == SMOLLM2
  for messages in CONVERSATIONS:
    prompt_ids, response_ids = sft.example_ids(ours, {"messages": messages}, "test")
    want_prompt = reference_tok.apply_chat_template(messages[:-1], add_generation_prompt=True,
                                                    tokenize=True, return_dict=False)
    want_whole = reference_tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert prompt_ids == list(want_prompt)
    assert prompt_ids + response_ids == list(want_whole)
    assert ours.decode(response_ids[-2:]) == "\n"  # the turn ends <|im_end|> (EOS) and '\n'
    assert ours.eos_id in response_ids
  user = chat_template.user_prompt(ours, "What is 2+2?", "--chat")
  assert user == reference_tok.apply_chat_template(
      [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, tokenize=False)


def byte_tokenizer(directory):
  """A byte-level tokenizer.json (256 bytes + ChatML markers) with SMOLLM2's template,
  saved and read back the way exports keep it."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers
  from a3_jax.tokenizer import JsonTokenizer
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  tok = tokenizers.Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
  eos = tok.token_to_id("<|im_end|>")
  JsonTokenizer(tok, bos_id=tok.token_to_id("<|im_start|>"), eos_id=eos,
                chat_template=SMOLLM2).save(str(directory))
  return str(directory / "tokenizer.json")


def test_template_survives_save_and_export(tmp_path):
  from a3_jax.tokenizer import load_tokenizer
  tok = load_tokenizer(byte_tokenizer(tmp_path))
  assert tok.chat_template == SMOLLM2 and tok.vocab_size == 258
  text = chat_template.user_prompt(tok, "hi", "--chat")
  assert text.endswith("<|im_start|>assistant\n")
  assert tok.encode(text).count(tok.bos_id) == 3  # the markers are single tokens


def test_generate_chat(tmp_path):
  import jax
  from flax.linen import meta
  from a3_jax.config import get_preset
  from a3_jax.export import save_export
  from a3_jax.model import init_params
  from cli_helpers import assert_one_line_error, run_main, tiny_export
  (tmp_path / "b").mkdir()
  tokenizer_path = byte_tokenizer(tmp_path)
  config = get_preset("tiny", vocab_size=258)
  params = meta.unbox(jax.jit(init_params, static_argnums=0)(config, jax.random.key(0)))
  export = save_export(str(tmp_path / "export"), params, config, tokenizer_path)
  code, out, err = run_main("a3_jax.cli.generate", f"--checkpoint={export}", "--chat",
                            "--prompt=Hi", "--max_new_tokens=4", "--temperature=0", "--json")
  assert code == 0, err
  import json
  sample = json.loads(out)
  assert sample["text"].startswith("system\nYou are a helpful AI assistant named SmolLM")
  assert "user\nHi\nassistant\n" in sample["text"]  # special markers dropped when decoding
  assert sample["groups"][:len(sample["groups"]) - sample["generated_tokens"]] == [0] * (
      len(sample["groups"]) - sample["generated_tokens"])
  assert_one_line_error(run_main("a3_jax.cli.generate", f"--checkpoint={tiny_export(tmp_path / 'b')}",
                                 "--chat", "--prompt=Hi", "--max_new_tokens=4"),
                        "a3-generate", "has no chat template")
