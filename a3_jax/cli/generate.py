"""`a3-generate`: fill blanks in a prompt, or continue it, with an A3 checkpoint.

  a3-generate --checkpoint=exports/default --prompt='To be, or <blank:4> to be'
  a3-generate --checkpoint=exports/default --prompt='ROMEO:' --max_new_tokens=64 \\
      --decoder=dynamic --criterion=entropy --block_size=16 --num_samples=3
  a3-generate --checkpoint=exports/default --prompt='<blank:8> the king.' --show_order
  a3-generate --checkpoint=exports/smollm2_adapted --chat \
      --prompt='What is the capital of France?' --max_new_tokens=32 --temperature=0

`<blank:N>` stands for N tokens to generate, anywhere in the prompt;
--max_new_tokens appends that many more (a prompt without blanks stops at EOS). Known
tokens form group 0. --decoder=group decodes the blanks in groups of
--group_size (--order l2r or random); --decoder=dynamic commits the
--commit_per_step best blanks per step by --criterion; --decoder=speculative
samples one token at a time in --order (exactly group decoding with
--group_size=1 in distribution) while drafting and verifying --draft_size
tokens per model call. `<blank:MIN-MAX>` is a blank of unknown length: every
length is scored by log p(text after | text before, length) in one pass, plus
--length_prior, and the best is filled. Prints each sample's
text and exact log-probability (of the generated tokens under the grouping
they were generated in); --show_order adds the step each token was committed
in; --json prints one JSON object per sample instead.
--chat: --prompt is one user message, rendered with the tokenizer's chat template
(and the assistant header) before decoding; the answer stops at EOS.
--checkpoint: an a3-export directory, hf:DIR or gguf:FILE.
"""

from __future__ import annotations

import json
import sys

import jax
from absl import flags

from a3_jax import chat_template
from a3_jax.cli import common as cli
from a3_jax.decoding import CRITERIA, ORDERS, blank_length
from a3_jax.convert.loader import load_model
from a3_jax.decoding.prompt import (format_sample, parse_length_template, parse_prompt,
                                   render)
from a3_jax.decoding.samples import decode_prompt
from a3_jax.decoding.sampling import SamplerConfig
from a3_jax.errors import UserError

DECODERS = ("group", "dynamic", "speculative")
F = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "export DIR | hf:DIR | gguf:FILE", flag_values=F)
flags.DEFINE_string("tokenizer", None, "tokenizer file (default: the checkpoint's own)",
                    flag_values=F)
flags.DEFINE_string("prompt", None, "text; <blank:N> marks N tokens to generate", flag_values=F)
flags.DEFINE_bool("chat", False, "--prompt is a user message: apply the tokenizer's chat "
                  "template (a3_jax/chat_template.py)", flag_values=F)
flags.DEFINE_integer("max_new_tokens", 0, "tokens to generate after the prompt", flag_values=F)
flags.DEFINE_enum("decoder", "group", DECODERS, "group (Algorithm 1) | dynamic (Algorithm 2) "
                  "| speculative (one token at a time, --draft_size drafted per call)",
                  flag_values=F)
flags.DEFINE_enum("form", "cached", ["cached", "recompute"], "cached (KV cache) | recompute (the authors' form: "
                    "committed tokens as one group, full re-run per step)", flag_values=F)
flags.DEFINE_integer("group_size", 1, "group decoder: tokens per group", flag_values=F)
flags.DEFINE_enum("order", "l2r", ORDERS, "group and speculative decoders: the order of the "
                  "groups", flag_values=F)
flags.DEFINE_integer("draft_size", 4, "speculative decoder: tokens drafted and verified per "
                     "call", flag_values=F)
flags.DEFINE_string("length_prior", "uniform", "<blank:MIN-MAX>: log prior over its lengths, "
                    "uniform | poisson:MEAN", flag_values=F)
flags.DEFINE_enum("criterion", "confidence", CRITERIA,
                  "dynamic decoder: how blanks are scored", flag_values=F)
flags.DEFINE_integer("commit_per_step", 1, "dynamic decoder: blanks committed per step",
                     flag_values=F)
flags.DEFINE_float("threshold", 0.9, "dynamic decoder, --criterion=threshold: commit every "
                   "blank at least this confident", flag_values=F)
flags.DEFINE_integer("block_size", 0, "dynamic decoder: semi-autoregressive blocks of this "
                     "many blanks (0 = off)", flag_values=F)
flags.DEFINE_float("temperature", 1.0, "sampling temperature (0 = greedy)", flag_values=F)
flags.DEFINE_integer("top_k", 0, "keep the k most likely tokens (0 = off)", flag_values=F)
flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1 = off)", flag_values=F)
flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=F)
flags.DEFINE_integer("num_samples", 1, "independent samples", flag_values=F)
flags.DEFINE_bool("json", False, "one JSON object per sample", flag_values=F)
flags.DEFINE_bool("show_order", False, "show the step each generated token was committed in",
                  flag_values=F)



def _check_flags() -> None:
  if not F.checkpoint:
    raise UserError("--checkpoint is required (an export DIR, hf:DIR or gguf:FILE)")
  if F.prompt is None:
    raise UserError("--prompt is required (use <blank:N> for N tokens to generate)")
  if F.chat and not F.max_new_tokens:
    raise UserError("--chat answers the message: set --max_new_tokens (the most tokens the "
                    "answer may take)")
  if F.group_size < 1:
    raise UserError(f"--group_size must be >= 1, got {F.group_size}")
  for name in ("commit_per_step", "num_samples", "draft_size"):
    if getattr(F, name) < 1:
      raise UserError(f"--{name} must be >= 1, got {getattr(F, name)}")
  for name in ("max_new_tokens", "block_size"):
    if getattr(F, name) < 0:
      raise UserError(f"--{name} must be >= 0, got {getattr(F, name)}")
  if not 0.0 <= F.threshold <= 1.0:  # NaN fails too
    raise UserError(f"--threshold must be in [0, 1], got {F.threshold}")
  SamplerConfig(F.temperature, F.top_k, F.top_p)  # validates
  blank_length.log_prior(F.length_prior, [1])  # validates


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-generate"):
    args = cli.parse(F, argv, "a3-generate", __doc__)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    _check_flags()
    params, config, tokenizer = load_model(F.checkpoint, F.tokenizer)
    prompt = chat_template.user_prompt(tokenizer, F.prompt, "--chat") if F.chat else F.prompt
    template = parse_length_template(prompt, tokenizer, F.max_new_tokens, config.max_seq_len)
    choice = None
    if template is None:
      tokens_T, known_T = parse_prompt(prompt, tokenizer, F.max_new_tokens,
                                       config.max_seq_len)
    else:
      choice = blank_length.choose_length(params, config, template, F.length_prior)
      tokens_T, known_T = template.fill(choice.chosen)
      if not F.json:
        print(f"blank length {choice.chosen} chosen from {template.lengths.start}-"
              f"{template.lengths.stop - 1}: " + "  ".join(
                  f"{n}:{t:.2f}" for n, t in zip(choice.lengths, choice.total)), flush=True)
    if len(tokens_T) > config.max_seq_len:
      raise UserError(f"prompt and blanks take {len(tokens_T)} tokens, more than the "
                       f"model's maximum of {config.max_seq_len}")
    # Only a plain continuation stops at EOS: an EOS in an infilled blank would
    # cut off the known text after it.
    continuation = known_T[:len(known_T) - F.max_new_tokens].all()
    eos_id = tokenizer.eos_id if continuation and tokenizer.eos_id >= 0 else None
    out = jax.device_get(decode_prompt(
        params, config, tokens_T, known_T, num_samples=F.num_samples, decoder=F.decoder,
        sampler=SamplerConfig(F.temperature, F.top_k, F.top_p), seed=F.seed, eos_id=eos_id,
        pad_id=max(tokenizer.pad_id, 0), form=F.form, order=F.order, group_size=F.group_size,
        criterion=F.criterion, commit_per_step=F.commit_per_step, threshold=F.threshold,
        block_size=F.block_size, draft_size=F.draft_size))
    for i in range(F.num_samples):
      sample = render(tokenizer, out.tokens[i], out.groups[i], int(out.length[i]),
                      out.logprob[i])
      if hasattr(out, "calls"):
        sample["model_calls"] = int(out.calls[i])
      if choice is not None:
        sample["length_choice"] = choice.as_json()
      if F.json:
        print(json.dumps({"sample": i, **sample}), flush=True)
      else:
        print(format_sample(i, sample, F.show_order), flush=True)
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
