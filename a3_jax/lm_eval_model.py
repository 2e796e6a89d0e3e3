"""An lm-evaluation-harness model for a3_jax checkpoints: `--model a3_jax`.

Needs the optional extra (`pip install -e ".[lm-eval]"`); nothing else in
a3_jax imports this module. lm-eval finds models only in its own registry (it
reads no entry points), so importing this module registers `a3_jax`, and
`a3-lm-eval` is lm-eval's own command line with it registered:

  a3-lm-eval --model a3_jax --model_args pretrained=exports/default --batch_size 16 \\
    --tasks piqa,hellaswag --output_path results/
  # in Python: import a3_jax.lm_eval_model; lm_eval.simple_evaluate(model="a3_jax", ...)

Requests, all exact and batched (`batch_size` rows per pass):
  loglikelihood          context in group 0, the continuation's tokens in the
                         groups of `grouping` (conditional.target_groups: 'ar' =
                         singletons in order, the AR factorisation given the
                         context; 'one', 'block:K', 'perm:K'), one pass per batch;
                         is_greedy = every continuation token is its argmax.
                         Pairs are tokenized as a3-eval's tasks do
                         (tasks/scoring.encode_pair); a context too long for the
                         model is cut from the left.
  loglikelihood_rolling  log p(text), the whole text: `rolling_grouping` in
                         windows of `window` tokens (default the model's length),
                         each after the first conditioned on `context` tokens of
                         the previous one (evaluate.score_texts, as `a3-eval
                         --text_file`). The first token is predicted from nothing
                         (no BOS prefix): it is part of log p(text).
  generate_until         `decoder` group (Algorithm 1: blanks after the prompt in
                         groups of `group_size`, `order` l2r|random) or dynamic
                         (Algorithm 2: `criterion`, `group_size` commits per
                         step, `block_size`), `max_gen_toks` new tokens (request's
                         gen_kwargs override), stopped at EOS, cut at the first
                         `until` string. gen_kwargs temperature/top_k/top_p/do_sample
                         pick the sampler (greedy unless do_sample). The decoder
                         always runs max_gen_toks positions unless EOS ends a row.

Model args (--model_args KEY=VALUE,KEY=VALUE):
  pretrained        EXPORT_DIR | hf:DIR | gguf:FILE (required; alias: checkpoint;
                    with `pretrained`, lm-eval names the results directory after it)
  tokenizer         a tokenizer file replacing the checkpoint's own
  grouping          loglikelihood's continuation groups: ar | one | block:K | perm:K (ar)
  rolling_grouping  loglikelihood_rolling's grouping: ar | block:K | perm:K (ar)
  window            tokens per rolling pass (the model's max_seq_len)
  context           tokens of the previous window each rolling window sees (0)
  decoder           generate_until: group | dynamic (group)
  group_size        group: tokens per group; dynamic: commits per step (1)
  order             group: l2r | random (l2r)
  criterion         dynamic: confidence | entropy | margin | random | threshold (confidence)
  block_size        dynamic: semi-autoregressive blocks, 0 = off (0)
  max_gen_toks      generate_until's new tokens unless a request says (256)
  seed              orders and sampling (0)
Rows per pass: lm-eval's --batch_size.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from a3_jax import conditional, evaluate, teacher_forced
from a3_jax.convert.loader import load_model
from a3_jax.decoding import (CRITERIA, ORDERS, SamplerConfig, decode_dynamic, decode_groups,
                             schedule)
from a3_jax.errors import UserError
from a3_jax.tasks.scoring import encode_pair

DECODERS = ("group", "dynamic")


def _integer(name: str, value, minimum: int | None = None) -> int:
  """An integer model arg (lm-eval passes strings), at least `minimum`."""
  try:
    value = int(value)
  except (TypeError, ValueError):
    raise UserError(f"model arg {name}={value} is not an integer") from None
  if minimum is not None and value < minimum:
    raise UserError(f"model arg {name} must be an integer >= {minimum}, got {value}")
  return value


@register_model("a3_jax")
class A3JaxLM(LM):
  """lm-eval's LM over an a3_jax checkpoint; see the module docstring."""

  def __init__(self, pretrained: str | None = None, checkpoint: str | None = None,
               tokenizer: str | None = None,
               batch_size: int | str = 8, grouping: str = "ar", rolling_grouping: str = "ar",
               window: int | None = None, context: int = 0, decoder: str = "group",
               group_size: int = 1, order: str = "l2r", criterion: str = "confidence",
               block_size: int = 0, max_gen_toks: int = 256, seed: int = 0,
               **unused: Any):
    super().__init__()
    del unused  # lm-eval passes device, max_batch_size, ...: one host, jax places arrays
    if pretrained and checkpoint and pretrained != checkpoint:
      raise UserError("model args pretrained and checkpoint name different checkpoints")
    checkpoint = pretrained or checkpoint
    if not checkpoint:
      raise UserError("model arg pretrained (or checkpoint) is required: an export DIR, "
                      "hf:DIR or gguf:FILE")
    if str(batch_size).startswith("auto"):
      raise UserError("batch_size 'auto' is not supported: give a number of rows per pass")
    self.batch_size = _integer("batch_size", batch_size, 1)
    self.group_size = _integer("group_size", group_size, 1)
    self.max_gen_toks = _integer("max_gen_toks", max_gen_toks, 1)
    window = None if window is None else _integer("window", window, 1)
    context, block_size = _integer("context", context, 0), _integer("block_size", block_size, 0)
    seed = _integer("seed", seed)
    conditional.target_groups(1, grouping)  # a typo fails before the model loads
    evaluate.check_grouping(rolling_grouping, "query")
    for name, value, choices in (("decoder", decoder, DECODERS), ("order", order, ORDERS),
                                 ("criterion", criterion, CRITERIA)):
      if value not in choices:
        raise UserError(f"model arg {name} must be one of {choices}, got {value!r}")
    self.grouping, self.rolling_grouping, self.decoder = grouping, rolling_grouping, decoder
    self.order, self.criterion, self.block_size = order, criterion, int(block_size)
    self.seed = int(seed)
    self.params, self.config, self.tokenizer = load_model(checkpoint, tokenizer)
    self.window = min(int(window or self.config.max_seq_len), self.config.max_seq_len)
    self.context = int(context)
    if not 0 <= self.context < self.window:
      raise UserError(f"model arg context must lie in [0, window={self.window})")
    eos = self.tokenizer.eos_id
    self.eos_id = eos if 0 <= eos < self.config.vocab_size else None

  # -------------------------------------------------------------- loglikelihood

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    tokens, groups = [], []
    for i, req in enumerate(requests):
      ctx, cont = encode_pair(self.tokenizer, *req.args)
      if not cont:
        raise UserError(f"request {i}: the continuation {req.args[1]!r} encodes to no tokens")
      if len(cont) > self.config.max_seq_len:
        raise UserError(f"request {i}: a continuation of {len(cont)} tokens exceeds the "
                        f"model's {self.config.max_seq_len} positions")
      ctx = ctx[max(len(ctx) + len(cont) - self.config.max_seq_len, 0):]
      target = conditional.target_groups(len(cont), self.grouping, seed=self.seed, item=i)
      tokens.append(np.asarray(ctx + cont, np.int32))
      groups.append(np.concatenate([np.zeros(len(ctx), np.int32), target]))
    # Longest first: batches of similar widths, so less padding and few programs.
    by_length = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    scores = conditional.conditional_logprobs(
        self.params, self.config, [tokens[i] for i in by_length],
        [groups[i] for i in by_length], batch_size=self.batch_size)
    out: list[tuple[float, bool]] = [None] * len(tokens)  # type: ignore[list-item]
    for rank, i in enumerate(by_length):
      out[i] = (float(scores.logp[rank]), bool(scores.greedy[rank]))
    for req, res in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood", req.args, res)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    ids = [self.tokenizer.encode(req.args[0]) for req in requests]
    scored = [i for i, t in enumerate(ids) if t]  # an empty text has log p = 0
    out = [0.0] * len(ids)
    if scored:
      result = evaluate.score_texts(self.params, self.config, [ids[i] for i in scored],
                                    self.rolling_grouping, window=self.window,
                                    context=self.context, seed=self.seed,
                                    batch_size=self.batch_size)
      for i, lp in zip(scored, result.logp_per_text[0]):
        out[i] = float(lp)
    for req, res in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
    return out

  # -------------------------------------------------------------- generation

  def _sampler(self, kwargs: dict) -> SamplerConfig:
    if not kwargs.get("do_sample", False):
      return SamplerConfig(temperature=0.0)
    return SamplerConfig(temperature=float(kwargs.get("temperature", 1.0)),
                         top_k=int(kwargs.get("top_k") or 0),
                         top_p=float(kwargs.get("top_p") or 1.0))

  def _decode(self, tokens, known, valid, sampler, row_ids):
    if self.decoder == "group":
      groups = schedule(known, order=self.order, group_size=self.group_size, valid_BxT=valid,
                        seed=self.seed, row_ids=row_ids)
      return decode_groups(self.params, self.config, tokens, groups, sampler=sampler,
                           seed=self.seed, row_ids=row_ids, eos_id=self.eos_id)
    return decode_dynamic(self.params, self.config, tokens, known, valid_BxT=valid,
                          criterion=self.criterion, commit_per_step=self.group_size,
                          block_size=self.block_size, sampler=sampler, seed=self.seed,
                          row_ids=row_ids, eos_id=self.eos_id)

  def _continuation(self, prompt: list[int], new: list[int], until: list[str]) -> str:
    """The text of `new` after `prompt`, cut at the first stop string."""
    head = self.tokenizer.decode(prompt)
    whole = self.tokenizer.decode(prompt + new)
    text = whole[len(head):] if whole.startswith(head) else self.tokenizer.decode(new)
    for stop in until:
      if stop and stop in text:
        text = text[:text.index(stop)]
    return text

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    by_kwargs: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
      by_kwargs.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
    out = [""] * len(requests)
    for key, members in by_kwargs.items():
      kwargs = json.loads(key)
      until = kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      new_toks = _integer("max_gen_toks", kwargs.get("max_gen_toks", self.max_gen_toks), 1)
      if new_toks >= self.config.max_seq_len:
        raise UserError(f"max_gen_toks {new_toks} leaves no room for a prompt in the model's "
                        f"{self.config.max_seq_len} positions")
      sampler = self._sampler(kwargs)
      keep = self.config.max_seq_len - new_toks
      prompts = {i: self.tokenizer.encode(requests[i].args[0])[-keep:] for i in members}
      members = sorted(members, key=lambda i: -len(prompts[i]))
      for s in range(0, len(members), self.batch_size):
        chunk = members[s:s + self.batch_size]
        width = teacher_forced.padded_width(max(len(prompts[i]) for i in chunk) + new_toks,
                                            self.config.max_seq_len)
        tokens = np.zeros((self.batch_size, width), np.int32)
        known = np.zeros((self.batch_size, width), bool)
        valid = np.zeros((self.batch_size, width), bool)
        row_ids = np.zeros(self.batch_size, np.int32)
        for r, i in enumerate(chunk):
          n = len(prompts[i])
          tokens[r, :n], known[r, :n], valid[r, :n + new_toks], row_ids[r] = (
              prompts[i], True, True, i)
        result = self._decode(tokens, known, valid, sampler, row_ids)
        filled, length = np.asarray(result.tokens), np.asarray(result.length)
        for r, i in enumerate(chunk):
          n = len(prompts[i])
          new = [int(t) for t in filled[r, n:min(n + new_toks, int(length[r]))]]
          if self.eos_id is not None and self.eos_id in new:
            new = new[:new.index(self.eos_id)]
          out[i] = self._continuation(prompts[i], new, until)
          self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
    return out
