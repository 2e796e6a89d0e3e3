"""Fine-tuning on prompts and responses (issue 26): word reversal, before and after SFT.

One command (CPU, a few minutes):
  python experiments/sft/run.py [--workdir=runs/sft]

1. Data (make_data.py): "Reverse: king night sword. Reversed:" -> "sword night king";
   4,000 training and 200 test examples.
2. A few-step base model: the tiny preset, 60 steps on the embedded Shakespeare
   (causal:40,ar:20), exported.
3. SFT from that export (`--init_from`, `--data=sft:train.jsonl`, 16 rows of 64 tokens,
   several examples a row) twice: the response grouped `ar`, and any-order
   (`mix:ar=0.5,perm:1=0.5`: half the rows one token at a time in a random order).
4. Each model scored on the test set with `a3-eval --responses` under three orders of
   the response: ar, perm:1 (a random order, one token at a time) and one (all tokens
   in one parallel step). `exact` = every response token is the argmax given the
   prompt and the earlier groups: what greedy decoding in that order returns.
5. Greedy samples of three test prompts with a3-generate (left to right, random order,
   and all at once).
Writes WORKDIR/results.json; finished steps are reused, not redone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import make_data  # noqa: E402

from a3_jax.cli import eval as eval_cli  # noqa: E402
from a3_jax.cli import export as export_cli  # noqa: E402
from a3_jax.cli import generate as generate_cli  # noqa: E402
from a3_jax.cli import train as train_cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/sft", "where data, runs and exports go")
_STEPS = flags.DEFINE_integer("steps", 400, "SFT steps of each variant")

BASE = ["--preset=tiny", "--steps=60", "--curriculum=causal:40,ar:20", "--seq_len=128",
        "--batch_size=8", "--warmup_steps=10", "--eval_every=60", "--eval_batches=2"]
VARIANTS = {"sft_ar": "ar", "sft_any_order": "mix:ar=0.5,perm:1=0.5"}
GROUPINGS = ("ar", "perm:1", "one")
DECODERS = {"left to right": ["--order=l2r"], "random order": ["--order=random"],
            "all at once": ["--group_size=4"]}


def call(main, *argv) -> str:
  """Runs a console script in-process; returns its stdout (stderr passes through)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = main(list(argv))
  if code:
    raise SystemExit(f"{main.__module__} {' '.join(argv)} failed ({code})")
  return out.getvalue()


def trained(name: str, flags_: list[str]) -> str:
  """The export of a run (trained and exported unless already there)."""
  workdir, export = (os.path.join(_WORKDIR.value, d, name) for d in ("runs", "exports"))
  if not os.path.isdir(export):
    started = time.perf_counter()
    print(call(train_cli.main, f"--workdir={workdir}", *flags_), end="", flush=True)
    print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    call(export_cli.main, f"--workdir={workdir}", f"--out={export}")
  return export


def main(argv):
  del argv
  paths = make_data.write(os.path.join(_WORKDIR.value, "data"))
  models = {"base": trained("base", BASE)}
  for name, curriculum in VARIANTS.items():
    models[name] = trained(name, [
        f"--init_from={models['base']}", f"--data=sft:{paths['train']}",
        f"--eval_data=sft:{paths['test']}", "--seq_len=64", "--batch_size=16",
        f"--steps={_STEPS.value}", f"--curriculum={curriculum}:{_STEPS.value}",
        "--lr=2e-3", "--warmup_steps=20", f"--eval_every={_STEPS.value}", "--eval_batches=4",
        f"--save_every={_STEPS.value}"])
  results = {"scores": {}, "samples": {}}
  with open(paths["test"]) as f:
    prompts = [json.loads(line) for line in f][:3]
  for name, export in models.items():
    for grouping in GROUPINGS:
      out = json.loads(call(eval_cli.main, f"--checkpoint={export}",
                            f"--responses={paths['test']}", f"--target_grouping={grouping}",
                            "--batch_size=50", "--json"))
      del out["per_example"]
      results["scores"][f"{name} {grouping}"] = out
      print(f"{name:14s} {grouping:7s} exact {out['exact']:.3f}  "
            f"nll/token {out['nll_per_token']:.3f}", flush=True)
    for decoder, decoder_flags in DECODERS.items():
      for example in prompts:
        sample = json.loads(call(generate_cli.main, f"--checkpoint={export}",
                                 f"--prompt={example['prompt']}", "--max_new_tokens=4",
                                 "--temperature=0", "--json", *decoder_flags))
        results["samples"].setdefault(name, []).append(
            {"decoder": decoder, "prompt": example["prompt"], "want": example["response"],
             "got": sample["text"].split("Reversed:", 1)[-1].strip()})
  for name, samples in results["samples"].items():
    for s in samples:
      print(f"{name:14s} {s['decoder']:14s} {s['prompt']!r} -> {s['got']!r}")
  with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(json.dumps({k: v["exact"] for k, v in results["scores"].items()}))


if __name__ == "__main__":
  app.run(main)
