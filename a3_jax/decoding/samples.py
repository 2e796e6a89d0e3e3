"""Samples of one prompt with a chosen decoder (what a3-generate and `a3_jax.load` run)."""

from __future__ import annotations

import jax
import numpy as np

from a3_jax.decoding import blank_length, causal, dynamic, group, speculative
from a3_jax.decoding.prompt import parse_length_template, parse_prompt, render
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError


def decode_prompt(params, config, tokens_T, known_T, *, num_samples: int = 1,
                  decoder: str = "group", sampler: SamplerConfig = SamplerConfig(),
                  seed: int = 0, eos_id: int | None = None, pad_id: int = 0,
                  form: str = "cached", order: str = "l2r", group_size: int = 1,
                  criterion: str = "confidence", commit_per_step: int = 1,
                  threshold: float = 0.9, block_size: int = 0, draft_size: int = 4):
  """`num_samples` rows of one prompt (tokens_T [T], known_T [T] bool) decoded by
  `decoder`: 'group' (groups of `group_size` in `order`) or 'dynamic' (`criterion`,
  `commit_per_step`, `threshold`, `block_size`) or 'speculative' (one token at a time in
  `order`, `draft_size` drafted per call; no `form`) or 'causal' (the content stream as a
  causal LM, left to right; no `form`). Returns the decoder's result."""
  tokens = np.broadcast_to(tokens_T, (num_samples, len(tokens_T)))
  known = np.broadcast_to(known_T, tokens.shape)
  common = dict(sampler=sampler, seed=seed, eos_id=eos_id, pad_id=pad_id, form=form)
  if decoder == "causal":
    del common["form"]
    return causal.decode_causal(params, config, tokens, known, **common)
  if decoder == "speculative":
    order_ids = group.schedule(known, order=order, group_size=1, seed=seed)
    del common["form"]
    return speculative.decode_speculative(params, config, tokens, order_ids,
                                          draft_size=draft_size, **common)
  if decoder == "group":
    groups = group.schedule(known, order=order, group_size=group_size, seed=seed)
    return group.decode_groups(params, config, tokens, groups, **common)
  if decoder != "dynamic":
    raise ValueError(f"unknown decoder {decoder!r}")
  return dynamic.decode_dynamic(params, config, tokens, known, criterion=criterion,
                                commit_per_step=commit_per_step, threshold=threshold,
                                block_size=block_size, **common)


def sample_prompt(params, config, tokenizer, prompt: str, max_new_tokens: int = 0, *,
                  head: str = "query", length_prior: str = "uniform", on_length=None,
                  **options) -> list[dict]:
  """Samples of a text prompt: `<blank:N>` marks N tokens to fill, `<blank:MIN-MAX>` one
  blank whose length is chosen first (by `length_prior` and how well the text after it
  follows; `on_length(choice)` hears the choice), and `max_new_tokens` more follow the
  prompt. head 'query' decodes with `options` (decode_prompt's); head 'content'
  samples the causal LM left to right. A plain continuation stops at EOS (an EOS in
  an infilled blank would cut off the known text after it). Returns one dict per
  sample (prompt.render: text, logprob, tokens, groups, steps; model_calls and
  length_choice where they apply)."""
  template = parse_length_template(prompt, tokenizer, max_new_tokens, config.max_seq_len)
  choice = None
  if template is None:
    tokens_T, known_T = parse_prompt(prompt, tokenizer, max_new_tokens, config.max_seq_len)
  elif head == "content":
    raise UserError("<blank:MIN-MAX> scores lengths with the query stream: use <blank:N> "
                    "with --head=content")
  else:
    choice = blank_length.choose_length(params, config, template, length_prior)
    tokens_T, known_T = template.fill(choice.chosen)
    if on_length is not None:
      on_length(choice)
  if len(tokens_T) > config.max_seq_len:
    raise UserError(f"prompt and blanks take {len(tokens_T)} tokens, more than the "
                    f"model's maximum of {config.max_seq_len}")
  continuation = known_T[:len(known_T) - max_new_tokens].all()
  eos_id = tokenizer.eos_id if continuation and tokenizer.eos_id >= 0 else None
  if head == "content":
    options = dict(options, decoder="causal")
  out = jax.device_get(decode_prompt(params, config, tokens_T, known_T, eos_id=eos_id,
                                     pad_id=max(tokenizer.pad_id, 0), **options))
  samples = []
  for i in range(len(out.tokens)):
    sample = render(tokenizer, out.tokens[i], out.groups[i], int(out.length[i]), out.logprob[i])
    if hasattr(out, "calls"):
      sample["model_calls"] = int(out.calls[i])
    if choice is not None:
      sample["length_choice"] = choice.as_json()
    samples.append(sample)
  return samples
