"""`a3-eval`: exact likelihood of a text file, or one task of the paper's suite.

  a3-eval --checkpoint=exports/default --text_file=shakespeare:validation
  a3-eval --checkpoint=exports/default --text_file=play.txt --grouping=ar,block:4,perm:4
  a3-eval --checkpoint=exports/default --text_file=play.txt --curve   # group sizes 1..16
  a3-eval --checkpoint=hf:/ckpt/SmolLM2 --text_file=play.txt --head=content
  a3-eval --checkpoint=exports/mdm --text_file=play.txt --head=mdm --elbo_samples=32
  a3-eval --checkpoint=exports/default --task=piqa --task_data=piqa/dev.jsonl --limit=500
  a3-eval --checkpoint=exports/default --conditional="{{Fair is}} [[foul]], and foul is fair"
  a3-eval --checkpoint=exports/sft --responses=qa.jsonl --target_grouping=perm:4

--checkpoint: an a3-export directory, hf:DIR or gguf:FILE. --text_file: a .jsonl
file is one document per line (its `text` field); `shakespeare:SPLIT` the embedded
plays of a split (validation: Macbeth, The Tempest, Twelfth Night); any other file
is one document. Windows default to the sequence length the export was trained
on, each later one conditioning on half of the previous. --conditional (repeatable): log p(x_A | x_B) of a marked text,
[[target]] and {{condition}} spans, the rest absent (a3_jax/marked.py). --responses:
log p(response | prompt) of a .jsonl file of prompt/response or chat records (the
prompt given as group 0, the response ordered by --target_grouping) and the fraction
whose every response token is the argmax (a3_jax/responses.py). --json
prints the result as one JSON object on stdout (the table on stderr).
"""

from __future__ import annotations

import json
import sys

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.errors import UserError
from a3_jax.tasks import FILL_METHODS as METHODS, TASKS

DEFAULT_GROUPINGS = {"query": "ar,block:4,perm:4", "content": "ar"}

F = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "export DIR | hf:DIR | gguf:FILE", flag_values=F)
flags.DEFINE_string("tokenizer", None, "tokenizer file (default: the checkpoint's own)",
                    flag_values=F)
flags.DEFINE_string("text_file", None, "text to score: .txt (one document), .jsonl ('text' per "
                    "line) or shakespeare:train|validation (the embedded plays)", flag_values=F)
flags.DEFINE_string("grouping", None, "comma-separated groupings: ar, block:K, perm:K "
                    f"(default: {DEFAULT_GROUPINGS['query']}; ar for --head=content)",
                    flag_values=F)
flags.DEFINE_enum("head", "query", ["query", "content", "mdm"],
                  "query: A3 exact likelihood; content: causal LM (ar grouping, shifted); "
                  "mdm: masked-diffusion ELBO (bidirectional content stream)", flag_values=F)
flags.DEFINE_integer("orders", 4, "random orders averaged for perm groupings", flag_values=F)
flags.DEFINE_integer("window", None, "tokens per pass (default: the export's training seq_len, "
                     "else 1024; capped at the model's max_seq_len)", flag_values=F)
flags.DEFINE_integer("context", None, "tokens of the previous window each later window "
                     "conditions on (default: half the window)", flag_values=F)
flags.DEFINE_integer("batch_size", 8, "rows per pass", flag_values=F)
flags.DEFINE_integer("seed", 0, "seed of the random orders / ELBO samples", flag_values=F)
flags.DEFINE_integer("elbo_samples", 16, "Monte Carlo samples of the MDM ELBO", flag_values=F)
flags.DEFINE_integer("mask_id", 0, "--head=mdm: the mask token id the model was trained with "
                     "(a3-train --objective=mdm uses 0, the embedded tokenizer's pad id)",
                     flag_values=F)
flags.DEFINE_bool("mdm_shift", None, "--head=mdm: the model predicts token i + 1 at position i "
                  "(DiffuLLaMA-style adaptation, a3-train --mdm_shift); default: from the "
                  "export's training flags", flag_values=F)
flags.DEFINE_bool("curve", False, "also the parallelism-likelihood curve: block and perm, "
                  "group sizes 1, 2, 4, 8, 16 (table + PNG)", flag_values=F)
flags.DEFINE_string("curve_png", None, "where --curve writes its PNG (default: "
                    "parallelism_curve.png in the export directory; for hf:/gguf: checkpoints "
                    "in the current directory)", flag_values=F)
flags.DEFINE_bool("json", False, "stdout: one JSON object (the human table goes to stderr)",
                  flag_values=F)
flags.DEFINE_enum("task", None, TASKS, "a task of the paper's suite",
                    flag_values=F)
flags.DEFINE_string("task_data", None, "the task's data, which you download: its published "
                    "file (.jsonl/.json/.csv; PIQA and SIQA with the sibling "
                    "<name>-labels.lst), the same records from the HF hub, or a prepared "
                    "tfds:NAME[:SPLIT]; README 'Evaluation' lists the sources",
                    flag_values=F)
flags.DEFINE_integer("limit", None, "evaluate the first N examples of the task", flag_values=F)
flags.DEFINE_enum("fill_method", None, METHODS, "generation tasks: how blanks are filled "
                    "(default: from --head)", flag_values=F)
flags.DEFINE_integer("group_size", 1, "generation tasks: tokens per model call", flag_values=F)
flags.DEFINE_integer("max_new_tokens", 24, "triviaqa: tokens generated per answer", flag_values=F)
flags.DEFINE_multi_string("conditional", None, "a marked text: log p([[target]] | "
                          "{{condition}}), unmarked text absent; repeat for a batch",
                          flag_values=F)
flags.DEFINE_string("responses", None, "a .jsonl file of prompt/response (or chat 'messages') "
                    "records: log p(response | prompt)", flag_values=F)
flags.DEFINE_string("target_grouping", "ar", "--conditional, --responses: the target's groups: "
                    "ar | one | spans (--conditional) | block:K | perm:K", flag_values=F)
flags.DEFINE_enum("unmarked", "absent", ["absent", "condition"],
                  "--conditional: unmarked text is absent or part of the condition",
                  flag_values=F)


def groupings(head: str) -> list[str]:
  from a3_jax import evaluate
  if head == "mdm":
    if F["grouping"].present:
      raise UserError("--head=mdm scores the ELBO, which has no grouping: drop --grouping")
    return []
  spec = F.grouping or DEFAULT_GROUPINGS[head]
  names = [g.strip() for g in spec.split(",") if g.strip()]
  if not names:
    raise UserError("--grouping names no grouping")
  for name in names:  # fail on a typo before loading a model
    evaluate.check_grouping(name, head)
  return names


def _check_flags() -> None:
  if not F.checkpoint:
    raise UserError("--checkpoint is required (an export DIR, hf:DIR or gguf:FILE)")
  if sum(map(bool, (F.text_file, F.task, F.conditional, F.responses))) != 1:
    raise UserError("give exactly one of --text_file (likelihood), --task (a task of the "
                    "suite), --conditional (a marked text) or --responses (a .jsonl file of "
                    "prompts and responses)")
  for name in ("conditional", "responses"):
    if getattr(F, name) and F.head != "query":
      raise UserError(f"--{name} scores with the A3 query stream: it needs --head=query")
  if F.task and not F.task_data:
    raise UserError("--task needs --task_data (a task file or tfds:NAME[:SPLIT])")
  if F.curve and F.head != "query":
    raise UserError("--curve compares A3 groupings: it needs --head=query")
  for name in ("orders", "window", "batch_size", "elbo_samples", "group_size", "max_new_tokens"):
    if getattr(F, name) is not None and getattr(F, name) < 1:
      raise UserError(f"--{name} must be >= 1, got {getattr(F, name)}")
  if F.context is not None and F.context < 0:
    raise UserError(f"--context must be >= 0, got {F.context}")
  if F.limit is not None and F.limit < 1:
    raise UserError(f"--limit must be >= 1, got {F.limit}")


def _progress(message: str) -> None:  # stderr: with --json, stdout is one JSON object
  print(message, file=sys.stderr, flush=True)


def format_task(out: dict) -> str:
  shown = {k: v for k, v in out.items() if k != "predictions"}
  return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in shown.items())


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-eval"):
    args = cli.parse(F, argv, "a3-eval", __doc__)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    _check_flags()
    # The library (and JAX) load after the flags parse: --help stays quick.
    from a3_jax.convert.loader import load_model
    from a3_jax.data.text_file import read_texts
    from a3_jax.likelihood_report import (curve_path, format_likelihood, likelihood_report,
                                          trained_mdm_shift, window_and_context)
    if F.text_file:
      names = groupings(F.head)
      texts = read_texts(F.text_file)
      png = curve_path(F.checkpoint, F.curve_png) if F.curve else None
      params, config, tokenizer = load_model(F.checkpoint, F.tokenizer)
      window, context = window_and_context(F.checkpoint, config, F.window, F.context)
      out = likelihood_report(
          params, config, tokenizer, texts, names, checkpoint=F.checkpoint,
          text_file=F.text_file, head=F.head, orders=F.orders, window=window,
          context=context, batch_size=F.batch_size, seed=F.seed,
          elbo_samples=F.elbo_samples, mask_id=F.mask_id,
          mdm_shift=trained_mdm_shift(F.checkpoint, F.mdm_shift),
          curve_png=png, progress=_progress)
      text = format_likelihood(out)
    elif F.conditional:
      from a3_jax import conditional, marked
      conditional.target_groups(1, F.target_grouping, span_ids=[0])  # typos fail first
      for t in F.conditional:
        marked.segments(t, F.unmarked)
      params, config, tokenizer = load_model(F.checkpoint, F.tokenizer)
      out = {"checkpoint": F.checkpoint, "results": marked.score_marked(
          params, config, tokenizer, F.conditional, grouping=F.target_grouping,
          unmarked=F.unmarked, seed=F.seed, batch_size=F.batch_size)}
      text = marked.format_marked(out["results"])
    elif F.responses:
      from a3_jax import conditional, responses
      if F.target_grouping == "spans":
        raise UserError("--target_grouping=spans needs marked spans: use 'one' for --responses")
      conditional.target_groups(1, F.target_grouping)  # typos fail first
      responses.check_path(F.responses)
      params, config, tokenizer = load_model(F.checkpoint, F.tokenizer)
      out = {"checkpoint": F.checkpoint, **responses.score_responses(
          params, config, tokenizer, F.responses, grouping=F.target_grouping, seed=F.seed,
          batch_size=F.batch_size)}
      text = responses.format_responses(out)
    else:
      from a3_jax.tasks.run import run_task
      params, config, tokenizer = load_model(F.checkpoint, F.tokenizer)
      out = run_task(F.task, F.task_data, params, config, tokenizer, head=F.head,
                     method=F.fill_method, limit=F.limit, batch_size=F.batch_size,
                     group_size=F.group_size, max_new_tokens=F.max_new_tokens,
                     mdm_shift=trained_mdm_shift(F.checkpoint, F.mdm_shift))
      text = format_task(out)
    if F.json:  # stdout: the one JSON object; the table goes to stderr
      print(text, file=sys.stderr, flush=True)
      print(json.dumps(out), flush=True)
    else:
      print(text, flush=True)
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
