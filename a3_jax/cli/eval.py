"""`a3-eval`: exact likelihood of a text file, or one task of the paper's suite.

  a3-eval --checkpoint=exports/default --text_file=play.txt --grouping=ar,block:4,perm:4
  a3-eval --checkpoint=exports/default --text_file=play.txt --curve   # group sizes 1..16
  a3-eval --checkpoint=hf:/ckpt/SmolLM2 --text_file=play.txt --head=content
  a3-eval --checkpoint=exports/mdm --text_file=play.txt --head=mdm --elbo_samples=32
  a3-eval --checkpoint=exports/default --task=piqa --task_data=piqa/dev.jsonl --limit=500

--checkpoint: an a3-export directory, hf:DIR or gguf:FILE. --text_file: a .jsonl
file is one document per line (its `text` field); any other file is one
document. --json prints one JSON object as the last line.
"""

from __future__ import annotations

import json
import os

from absl import flags

from a3_jax import evaluate
from a3_jax.convert.loader import load_model
from a3_jax.cli import common as cli
from a3_jax.data.sources import json_text
from a3_jax.errors import UserError

DEFAULT_GROUPINGS = {"query": "ar,block:4,perm:4", "content": "ar"}

F = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "export DIR | hf:DIR | gguf:FILE")
flags.DEFINE_string("tokenizer", None, "tokenizer file (default: the checkpoint's own)")
flags.DEFINE_string("text_file", None, "text to score: .txt (one document) or .jsonl ('text' per line)")
flags.DEFINE_string("grouping", None, "comma-separated groupings: ar, block:K, perm:K "
                    f"(default: {DEFAULT_GROUPINGS['query']}; ar for --head=content)")
flags.DEFINE_enum("head", "query", ["query", "content", "mdm"],
                  "query: A3 exact likelihood; content: causal LM (ar grouping, shifted); "
                  "mdm: masked-diffusion ELBO (bidirectional content stream)")
flags.DEFINE_integer("orders", 4, "random orders averaged for perm groupings")
flags.DEFINE_integer("window", 1024, "tokens per pass (capped at the model's max_seq_len)")
flags.DEFINE_integer("context", 0, "tokens of the previous window each later window conditions on")
flags.DEFINE_integer("batch_size", 8, "rows per pass")
flags.DEFINE_integer("seed", 0, "seed of the random orders / ELBO samples")
flags.DEFINE_integer("elbo_samples", 16, "Monte Carlo samples of the MDM ELBO")
flags.DEFINE_integer("mask_id", 0, "--head=mdm: the mask token id the model was trained with "
                     "(a3-train --objective=mdm uses 0, the embedded tokenizer's pad id)")
flags.DEFINE_bool("curve", False, "also the parallelism-likelihood curve: block and perm, "
                  "group sizes 1, 2, 4, 8, 16 (table + PNG)")
flags.DEFINE_string("curve_png", "parallelism_curve.png", "where --curve writes its PNG")
flags.DEFINE_bool("json", False, "print one JSON object as the last line")
flags.DEFINE_string("task", None, "task: hellaswag | winogrande | piqa | siqa | triviaqa | rocstories")
flags.DEFINE_string("task_data", None, "task file (.jsonl/.json/.csv) or tfds:NAME[:SPLIT]")
flags.DEFINE_integer("limit", None, "evaluate the first N examples of the task")
flags.DEFINE_string("fill_method", None, "generation tasks: a3 | a3-dynamic | ar | mdm "
                    "(default: from --head)")
flags.DEFINE_integer("group_size", 1, "generation tasks: tokens per model call")
flags.DEFINE_integer("max_new_tokens", 24, "triviaqa: tokens generated per answer")


def read_texts(path: str) -> list[str]:
  """Documents of a text file: one per line of a .jsonl file (`text`), else the whole file."""
  if os.path.isdir(path):
    raise UserError(f"--text_file={path} is a directory, not a text file")
  if not os.path.isfile(path):
    raise UserError(f"--text_file={path} does not exist")
  try:
    with open(path, encoding="utf-8", newline="") as f:
      content = f.read()
  except UnicodeDecodeError as e:
    raise UserError(f"--text_file={path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  if not content.strip():
    raise UserError(f"text file {path} is empty")
  if not path.endswith(".jsonl"):
    return [content]
  return [json_text(line, f"text file {path}, line {n}")
          for n, line in enumerate(content.splitlines(), 1) if line.strip()]


def encode_texts(tokenizer, texts: list[str], path: str, need: int) -> list[list[int]]:
  ids = [tokenizer.encode(t) for t in texts]
  for n, t in enumerate(ids):
    if len(t) < need:
      raise UserError(f"text file {path}: document {n} is {len(t)} token(s) long; this "
                       f"evaluation needs at least {need}")
  return ids


def groupings(head: str) -> list[str]:
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
  if bool(F.text_file) == bool(F.task):
    raise UserError("give exactly one of --text_file (likelihood) or --task (a task of the suite)")
  if F.task and not F.task_data:
    raise UserError("--task needs --task_data (a task file or tfds:NAME[:SPLIT])")
  if F.curve and F.head != "query":
    raise UserError("--curve compares A3 groupings: it needs --head=query")
  for name in ("orders", "window", "batch_size", "elbo_samples", "group_size", "max_new_tokens"):
    if getattr(F, name) < 1:
      raise UserError(f"--{name} must be >= 1, got {getattr(F, name)}")


def likelihood(params, config, tokenizer, texts: list[str], names: list[str]) -> dict:
  ids = encode_texts(tokenizer, texts, F.text_file, 2 if F.head == "content" else 1)
  common = dict(window=F.window, context=F.context, seed=F.seed)
  if F.head == "mdm":
    from a3_jax import mdm
    results = [mdm.nelbo_texts(params, config, ids, num_samples=F.elbo_samples,
                               mask_id=F.mask_id, **common)]
  else:
    results = [evaluate.score_texts(params, config, ids, g, head=F.head, orders=F.orders,
                                    batch_size=F.batch_size, **common).to_dict()
               for g in names]
  out = {"checkpoint": F.checkpoint, "text_file": F.text_file, "head": F.head,
         "documents": len(ids), "results": results}
  if F.curve:
    curve = evaluate.parallelism_curve(params, config, ids, orders=F.orders,
                                       batch_size=F.batch_size, **common)
    out["curve"] = [r.to_dict() for r in curve]
    out["curve_table"] = evaluate.curve_table(curve)
    out["curve_png"] = evaluate.plot_curve(curve, F.curve_png,
                                           os.path.basename(F.checkpoint.rstrip("/")))
  return out


def format_likelihood(out: dict) -> str:
  lines = [f"{out['checkpoint']} on {out['text_file']} ({out['documents']} document(s)), "
           f"head={out['head']}"]
  if out["head"] == "mdm":
    r = out["results"][0]
    lines.append(f"NELBO/token {r['nelbo_per_token']:.4f} ± {r['stderr_per_token']:.4f} "
                 f"(perplexity <= {r['perplexity_bound']:.2f}; {r['samples']} samples, "
                 f"{r['tokens']} tokens)")
    return "\n".join(lines)
  lines.append(f"{'grouping':<10} {'nll/token':>10} {'perplexity':>11} {'tokens':>8} "
               f"{'orders':>6} {'order std':>9}")
  for r in out["results"]:
    lines.append(f"{r['grouping']:<10} {r['nll_per_token']:>10.4f} {r['perplexity']:>11.2f} "
                 f"{r['tokens']:>8} {r['orders']:>6} {r['order_std']:>9.4f}")
  if "curve" in out:
    lines += ["", "parallelism-likelihood curve:", out["curve_table"], f"plot: {out['curve_png']}"]
  return "\n".join(lines)


def format_task(out: dict) -> str:
  shown = {k: v for k, v in out.items() if k != "predictions"}
  return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in shown.items())


def main(argv):
  with cli.user_errors("a3-eval"):
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {argv[1:]}")
    _check_flags()
    if F.text_file:
      names = groupings(F.head)
      texts = read_texts(F.text_file)
      params, config, tokenizer = load_model(F.checkpoint, F.tokenizer)
      out = likelihood(params, config, tokenizer, texts, names)
      text = format_likelihood(out)
    else:
      from a3_jax.tasks.run import TASKS, run_task
      if F.task not in TASKS:
        raise UserError(f"unknown task {F.task!r}; choose one of {TASKS}")
      params, config, tokenizer = load_model(F.checkpoint, F.tokenizer)
      out = run_task(F.task, F.task_data, params, config, tokenizer, head=F.head,
                     method=F.fill_method, limit=F.limit, batch_size=F.batch_size,
                     group_size=F.group_size, max_new_tokens=F.max_new_tokens)
      text = format_task(out)
    print(text, flush=True)
    if F.json:
      print(json.dumps(out), flush=True)


def entry():
  cli.run_app(main)


if __name__ == "__main__":
  entry()
