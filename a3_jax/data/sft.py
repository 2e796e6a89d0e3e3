"""Fine-tuning examples: JSON lines of prompts and responses, tokenized with roles and packed.

A `.jsonl` file (data spec `sft:GLOB`) holds one example per non-blank line:

    {"prompt": "Q: 2+3=", "response": " 5"}            the response ends with EOS
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}]}

A chat record is rendered by the tokenizer's chat template (a3_jax/chat_template.py):
the last message must be the assistant's and is the response (with the template's
end-of-turn marker, no EOS added); every earlier turn and the assistant header are
the prompt. Prompt and response are tokenized apart, so a token never straddles
them. Each example becomes `tokens` and `roles` (a3_jax/roles.py: PROMPT then
RESPONSE) and rows are packed whole by grain's first-fit packer: several examples
per row, each its own segment (positions from 0), never one split across rows.
An example longer than the row is refused (`overlong='refuse'`: a UserError naming
the file and line) or cut to the row's length (`'truncate'`: the end of the
response goes; an example whose prompt fills the row is still refused).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grain
import numpy as np

from a3_jax import chat_template, roles
from a3_jax.data import sources
from a3_jax.errors import UserError

OVERLONG = ("refuse", "truncate")
SCHEME = "sft:"


def example_source(spec: str) -> "ExampleSource":
  """The examples of a data spec 'sft:GLOB' (.jsonl files)."""
  if not spec.startswith(SCHEME) or not spec[len(SCHEME):]:
    raise UserError(f"data spec {spec!r}: expected 'sft:GLOB' (.jsonl files of examples)")
  return ExampleSource(sources.glob_files(spec, spec[len(SCHEME):], (".jsonl",)))


class ExampleSource(Sequence[tuple[str, dict]]):
  """(where, record) of every non-blank line of .jsonl files; `where` names the file
  and line for messages. Records are checked when read: a prompt/response pair of
  strings, or a list of chat messages."""

  def __init__(self, paths: Sequence[str]):
    self._paths = list(paths)
    self._offsets = [sources._line_offsets(p) for p in self._paths]
    self._ends = np.cumsum([len(o) for o in self._offsets])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int) -> tuple[str, dict]:
    if not 0 <= index < len(self):
      raise IndexError(f"example {index} of {len(self)}")  # Also ends plain iteration.
    file_index = int(np.searchsorted(self._ends, index, side="right"))
    line_index = int(index) - (int(self._ends[file_index - 1]) if file_index else 0)
    path = self._paths[file_index]
    offset, number = self._offsets[file_index][line_index]
    with open(path, "rb") as f:
      f.seek(int(offset))
      line = f.readline()
    where = f"{path}, line {number}"
    return where, parse_record(line, where)

  def __repr__(self) -> str:
    return f"ExampleSource({len(self._paths)} files, {len(self)} examples)"


def parse_record(line: bytes | str, where: str) -> dict:
  """One example's JSON object: {'prompt', 'response'} strings or {'messages'}."""
  record = sources.json_value(line, where)
  if isinstance(record, dict) and "messages" in record:
    return {"messages": chat_template.check_messages(record["messages"], where)}
  if not (isinstance(record, dict) and isinstance(record.get("prompt"), str)
          and isinstance(record.get("response"), str)):
    raise UserError(f"{where}: expected a JSON object with string 'prompt' and 'response' "
                    "fields, or a 'messages' list")
  if not record["response"]:
    raise UserError(f"{where}: the response is empty (nothing to learn)")
  return {"prompt": record["prompt"], "response": record["response"]}


def example_ids(tokenizer, record: dict, where: str) -> tuple[list[int], list[int]]:
  """(prompt ids, response ids) of one record; a prompt/response pair's response ends
  with EOS, a chat record's with the template's end of turn."""
  if "messages" in record:
    prompt, response = chat_template.prompt_and_response(tokenizer, record["messages"], where)
    return tokenizer.encode(prompt), tokenizer.encode(response)
  if tokenizer.eos_id < 0:
    raise UserError(f"{tokenizer} has no EOS id, which ends every response")
  return tokenizer.encode(record["prompt"]), tokenizer.encode(record["response"]) + [tokenizer.eos_id]


def check_first_example(source: "ExampleSource", tokenizer) -> None:
  """Reads and tokenizes the first example, so that a wrong format is refused before a
  run writes anything (a bad record later names its file and line when reached)."""
  if len(source):
    where, record = source[0]
    example_ids(tokenizer, record, where)


def encode_example(tokenizer, seq_len: int, overlong: str, item: tuple[str, dict]):
  """{'tokens', 'roles'} [n <= seq_len] int32 of one (where, record)."""
  where, record = item
  prompt_ids, response_ids = example_ids(tokenizer, record, where)
  n = len(prompt_ids) + len(response_ids)
  if n > seq_len and (overlong == "refuse" or len(prompt_ids) >= seq_len):
    raise UserError(f"{where}: the example is {n} tokens (prompt {len(prompt_ids)}), longer "
                    f"than a row of --seq_len={seq_len}" + (
                        "" if overlong == "refuse" else "; truncating would leave no response"))
  tokens = np.asarray(prompt_ids + response_ids, np.int32)[:seq_len]
  role = np.full(tokens.shape, roles.RESPONSE, np.int32)
  role[:len(prompt_ids)] = roles.PROMPT
  return {"tokens": tokens, "roles": role}


def check_overlong(overlong: str) -> None:
  if overlong not in OVERLONG:
    raise UserError(f"--sft_overlong must be one of {OVERLONG}, got {overlong!r}")


def packed_examples(records: grain.MapDataset, tokenizer, *, seq_len: int, overlong: str,
                    bins: int, read_options: grain.ReadOptions,
                    shuffle_bins: bool = True, seed: int = 0) -> grain.IterDataset:
  """Rows {tokens, roles, tokens_segment_ids, tokens_positions} [T] of whole examples,
  first-fit packed into `bins` rows at a time."""
  check_overlong(overlong)
  encode = functools.partial(encode_example, tokenizer, seq_len, overlong)  # picklable
  examples = records.map(encode).to_iter_dataset(read_options)
  return grain.experimental.FirstFitPackIterDataset(
      examples, length_struct={"tokens": seq_len, "roles": seq_len}, num_packing_bins=bins,
      shuffle_bins=shuffle_bins, seed=seed)
