"""`a3-generate`: fill blanks in a prompt, or continue it, with an A3 checkpoint.

  a3-generate --checkpoint=exports/default --prompt='To be, or <blank:4> to be'
  a3-generate --checkpoint=exports/default --prompt='ROMEO:' --max_new_tokens=64 \\
      --decoder=dynamic --criterion=entropy --block_size=16 --num_samples=3
  a3-generate --checkpoint=exports/default --prompt='<blank:8> the king.' --show_order
  a3-generate --checkpoint=gguf:SmolLM2-135M-Instruct.Q4_1.gguf --head=content --chat \\
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
--head=content samples the content stream as the causal LM it is, left to right
(an unadapted pretrained model, an --objective=ar run; blanks see only the text
to their left), and ignores the decoder flags. With --head=query (A3), a model
whose query stream was never trained (a converted AR model, a run that ended in
its causal stage) gets a warning: it would sample noise.
--chat: --prompt is one user message, rendered with the tokenizer's chat template
(and the assistant header) before decoding; the answer stops at EOS.
--checkpoint: an a3-export directory, hf:DIR or gguf:FILE.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.decoding.choices import CRITERIA, ORDERS
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
flags.DEFINE_enum("head", "query", ["query", "content"], "query: A3 decoding (the query "
                  "stream) | content: causal sampling of the content stream, left to right "
                  "(unadapted or AR models)", flag_values=F)
flags.DEFINE_enum("decoder", "group", DECODERS, "group (Algorithm 1) | dynamic (Algorithm 2) "
                  "| speculative (one token at a time, --draft_size drafted per call)",
                  flag_values=F)
flags.DEFINE_enum("form", "cached", ["cached", "recompute"], "cached (KV cache) | recompute (the authors' form: "
                    "committed tokens as one group, full re-run per step)", flag_values=F)
flags.DEFINE_integer("group_size", 1, "group decoder: tokens per group", flag_values=F)
flags.DEFINE_enum("order", "l2r", ORDERS, "group and speculative decoders: the order of the "
                  "groups", flag_values=F)
flags.DEFINE_integer("draft_size", 4, "speculative decoder: tokens drafted and verified per "
                     "call (capped at the prompt's blanks)", flag_values=F)
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
  from a3_jax.decoding import blank_length
  from a3_jax.decoding.sampling import SamplerConfig
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
  if F.head == "content" and F["decoder"].present and F.decoder != "group":
    raise UserError(f"--head=content samples left to right; --decoder={F.decoder} is for "
                    "--head=query")
  SamplerConfig(F.temperature, F.top_k, F.top_p)  # validates
  blank_length.log_prior(F.length_prior, [1])  # validates


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-generate"):
    args = cli.parse(F, argv, "a3-generate", __doc__)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    _check_flags()
    # The library (and JAX) load after the flags parse: --help stays quick.
    from a3_jax import chat_template
    from a3_jax.convert.loader import load_model
    from a3_jax.decoding.prompt import format_sample
    from a3_jax.decoding.samples import sample_prompt
    from a3_jax.decoding.sampling import SamplerConfig
    from a3_jax.history import untrained_query_stream
    params, config, tokenizer = load_model(F.checkpoint, F.tokenizer)
    untrained = untrained_query_stream(F.checkpoint) if F.head == "query" else None
    if untrained:
      print(f"warning: {untrained}: its query stream was never trained, so --head=query "
            "samples noise; use --head=content (the causal LM) or adapt it first "
            f"(a3-train --init_from={F.checkpoint})", file=sys.stderr, flush=True)

    def on_length(choice):
      if not F.json:
        print(f"blank length {choice.chosen} chosen from {choice.lengths[0]}-"
              f"{choice.lengths[-1]}: " + "  ".join(
                  f"{n}:{t:.2f}" for n, t in zip(choice.lengths, choice.total)), flush=True)

    prompt = chat_template.user_prompt(tokenizer, F.prompt, "--chat") if F.chat else F.prompt
    samples = sample_prompt(
        params, config, tokenizer, prompt, F.max_new_tokens, head=F.head,
        length_prior=F.length_prior, on_length=on_length, num_samples=F.num_samples,
        decoder=F.decoder, sampler=SamplerConfig(F.temperature, F.top_k, F.top_p),
        seed=F.seed, form=F.form, order=F.order, group_size=F.group_size,
        criterion=F.criterion, commit_per_step=F.commit_per_step, threshold=F.threshold,
        block_size=F.block_size, draft_size=F.draft_size)
    for i, sample in enumerate(samples):
      if F.json:
        print(json.dumps({"sample": i, **sample}), flush=True)
      else:
        print(format_sample(i, sample, F.show_order), flush=True)
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
