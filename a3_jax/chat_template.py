"""Chat templates: a list of messages -> the text a chat model was trained on.

A template is the Jinja source a tokenizer ships (HF `tokenizer_config.json`
`chat_template` or `chat_template.jinja`, GGUF `tokenizer.chat_template`). It
is rendered the way transformers' `apply_chat_template` renders it: a sandboxed
environment with `trim_blocks`/`lstrip_blocks` and loop controls, the
`raise_exception` and `strftime_now` globals, a `tojson` that does not escape
HTML, and the variables `messages`, `add_generation_prompt`, `tools` and
`documents` (None: no tool calling here) and the special tokens (`bos_token`,
`eos_token`, `pad_token`).
"""

from __future__ import annotations

import datetime
import functools
import json

import jinja2
from jinja2 import sandbox

from a3_jax.errors import UserError


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(template)
  except jinja2.exceptions.TemplateSyntaxError as e:
    raise UserError(f"the chat template is not valid Jinja (line {e.lineno}: {e.message})") from None


def check_messages(messages, where: str) -> list[dict[str, str]]:
  """`messages` as a list of {'role': str, 'content': str}, or a UserError naming `where`."""
  if not isinstance(messages, list) or not messages or not all(
      isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
      for m in messages):
    raise UserError(f"{where}: 'messages' must be a non-empty list of objects with string "
                    "'role' and 'content' fields")
  return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = False,
           special_tokens: dict[str, str] | None = None, where: str = "chat") -> str:
  """The text of `messages` under `template`; add_generation_prompt ends it with the
  header of an assistant turn. special_tokens: {'bos_token': '<s>', ...}."""
  try:
    return _compiled(template).render(messages=messages, tools=None, documents=None,
                                      add_generation_prompt=add_generation_prompt,
                                      **(special_tokens or {}))
  except jinja2.exceptions.TemplateError as e:
    raise UserError(f"{where}: the chat template refused these messages: {e}") from None


def template_of(tokenizer, where: str) -> str:
  """The tokenizer's chat template, or a UserError naming `where` (a flag or file)."""
  template = getattr(tokenizer, "chat_template", None)
  if not template:
    raise UserError(f"{where}: the tokenizer {tokenizer!r} has no chat template (it comes "
                    "from an HF tokenizer_config.json or a GGUF file); use prompt/response "
                    "records instead")
  return template


def special_tokens_of(tokenizer) -> dict[str, str]:
  """{'bos_token': text, ...} of the tokenizer's special ids (those it has)."""
  out = {}
  for role in ("bos", "eos", "pad"):
    i = getattr(tokenizer, f"{role}_id", -1)
    if i >= 0:
      out[f"{role}_token"] = tokenizer.id_to_text(i)
  return out


def user_prompt(tokenizer, message: str, where: str) -> str:
  """The text a chat model answers `message` after: one user turn and the assistant header."""
  return render(template_of(tokenizer, where), [{"role": "user", "content": message}],
                add_generation_prompt=True, special_tokens=special_tokens_of(tokenizer),
                where=where)


def prompt_and_response(tokenizer, messages: list[dict[str, str]], where: str) -> tuple[str, str]:
  """(prompt text, response text) of a conversation that ends with an assistant turn: the
  prompt is every earlier turn plus the assistant header (add_generation_prompt), the
  response the rest of the rendered conversation (the last turn and its end marker)."""
  if messages[-1]["role"] != "assistant":
    raise UserError(f"{where}: the last message must be the assistant's (the response to "
                    f"learn), not {messages[-1]['role']!r}")
  template, special = template_of(tokenizer, where), special_tokens_of(tokenizer)
  prompt = render(template, messages[:-1], add_generation_prompt=True, special_tokens=special,
                  where=where)
  whole = render(template, messages, special_tokens=special, where=where)
  if not whole.startswith(prompt):
    raise UserError(f"{where}: the chat template does not render the conversation as its "
                    "prompt (with the assistant header) followed by the last turn")
  return prompt, whole[len(prompt):]
