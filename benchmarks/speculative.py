"""Speculative decoding vs sequential cached decoding on a trained model.

Loads an a3-export (--export), or trains one with the default `a3-train`
(--steps shortens it; the curriculum is the default one, cut at --steps) and
exports it. Prompts: --prompt tokens of validation plays (Macbeth, The Tempest,
Twelfth Night), one window per row; --new_tokens blanks after each are filled
one token at a time in --orders (l2r, or a random order per row over the
blanks). For batch sizes 1 and 8 it times sequential cached decoding
(`decode_groups`, singleton groups: one model call per token) and speculative
decoding at each draft size K, all on the same prompts and keys, in one run:
generated tokens/s (median of --repeats interleaved runs after one compile-and-run each), committed
tokens per model call, and the acceptance rate of each draft slot j >= 1 (how
often a verification that reached slot j accepted it).

Last line: one JSON object; headline `tokens_per_call_k4` and
`speedup_vs_sequential_k4` (batch 1, left to right).

  python benchmarks/speculative.py [--export=DIR | --steps=N] [--quick]
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from a3_jax.convert.loader import load_model
from a3_jax.data.corpus import load_works
from a3_jax.decoding import group as decode, speculative
from a3_jax.decoding.sampling import SamplerConfig

FLAGS = flags.FLAGS
flags.DEFINE_string("export", None, "a3-export directory (default: train one)")
flags.DEFINE_integer("steps", None, "training steps when no --export (default: a3-train's)")
flags.DEFINE_string("workdir", None, "training run directory (default: a temporary one)")
flags.DEFINE_integer("prompt", 32, "known prompt tokens per row")
flags.DEFINE_integer("new_tokens", 64, "tokens generated per row")
flags.DEFINE_list("batch_sizes", ["1", "8"], "batch sizes")
flags.DEFINE_list("draft_sizes", ["2", "4", "8"], "draft sizes K")
flags.DEFINE_list("orders", ["l2r", "random"], "orders over the blanks")
flags.DEFINE_float("temperature", 1.0, "sampling temperature of draft and target")
flags.DEFINE_integer("repeats", 5, "timed runs per figure (median reported)")
flags.DEFINE_bool("quick", False, "1 timed run, batch 1 and K = 4 only")
flags.DEFINE_string("compile_cache", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"),
                    "persistent XLA compilation cache (compile time is not measured)")


def _train_and_export(steps, workdir) -> str:
  """The default a3-train run (cut at `steps`), exported; returns the export dir."""
  workdir = workdir or tempfile.mkdtemp(prefix="a3_speculative_")
  out = os.path.join(workdir, "export")
  train = [sys.executable, "-m", "a3_jax.cli.train", f"--workdir={workdir}"]
  if steps:
    train.append(f"--steps={steps}")
  for cmd in (train, [sys.executable, "-m", "a3_jax.cli.export", f"--workdir={workdir}",
                      f"--out={out}"]):
    print("running", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
  return out


def _prompts(tokenizer, batch, prompt, new_tokens):
  """Rows of `prompt` validation tokens followed by `new_tokens` blanks (true tokens kept)."""
  ids = np.concatenate([tokenizer.encode(text) for _, text in load_works("validation")])
  width = prompt + new_tokens
  starts = np.linspace(0, len(ids) - width, batch).astype(int)
  tokens = np.stack([ids[s:s + width] for s in starts]).astype(np.int32)
  known = np.zeros(tokens.shape, bool)
  known[:, :prompt] = True
  return tokens, known


def _timed(fns, repeats):
  """Median seconds of each function, runs interleaved (load drifts hit all alike);
  returns ({name: output}, {name: seconds})."""
  outs = {name: jax.device_get(jax.block_until_ready(fn())) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return outs, {name: statistics.median(t) for name, t in times.items()}


def main(argv):
  del argv
  jax.config.update("jax_compilation_cache_dir", FLAGS.compile_cache)
  export = FLAGS.export or _train_and_export(FLAGS.steps, FLAGS.workdir)
  params, cfg, tokenizer = load_model(export)
  repeats = 1 if FLAGS.quick else FLAGS.repeats
  batch_sizes = [1] if FLAGS.quick else [int(b) for b in FLAGS.batch_sizes]
  draft_sizes = [4] if FLAGS.quick else [int(k) for k in FLAGS.draft_sizes]
  sampler = SamplerConfig(temperature=FLAGS.temperature)
  results = {"export": export, "device": jax.devices()[0].device_kind, "prompt": FLAGS.prompt,
             "new_tokens": FLAGS.new_tokens, "temperature": FLAGS.temperature,
             "repeats": repeats}
  for b in batch_sizes:
    tokens, known = _prompts(tokenizer, b, FLAGS.prompt, FLAGS.new_tokens)
    for order_name in FLAGS.orders:
      order = decode.schedule(known, order=order_name, group_size=1, seed=1)
      generated = int((order > 0).sum())
      fns = {0: functools.partial(decode.decode_groups, params, cfg, tokens, order,
                                  sampler=sampler, seed=0)}
      for k in draft_sizes:
        fns[k] = functools.partial(speculative.decode_speculative, params, cfg, tokens, order,
                                   draft_size=k, sampler=sampler, seed=0)
      outs, seconds = _timed(fns, repeats)
      base_rate = generated / seconds[0]
      tag = f"b{b}_{order_name}"
      results[f"{tag}_sequential_tokens_per_s"] = round(base_rate, 1)
      print(f"batch {b} {order_name:6s} sequential     : {base_rate:8.1f} tokens/s  "
            f"1.00 tokens/call", flush=True)
      for k in draft_sizes:
        out = outs[k]
        rate = generated / seconds[k]
        per_call = generated / int(out.calls.sum())
        reached, accepted = out.reached.sum(axis=0)[1:], out.accepted.sum(axis=0)[1:]
        acceptance = [round(float(a / r), 3) if r else None for a, r in zip(accepted, reached)]
        results[f"{tag}_k{k}_tokens_per_s"] = round(rate, 1)
        results[f"{tag}_k{k}_tokens_per_call"] = round(per_call, 3)
        results[f"{tag}_k{k}_speedup"] = round(rate / base_rate, 3)
        results[f"{tag}_k{k}_acceptance_by_slot"] = acceptance
        print(f"batch {b} {order_name:6s} speculative K={k}: {rate:8.1f} tokens/s  "
              f"{per_call:.2f} tokens/call  speed-up {rate / base_rate:.2f}  "
              f"acceptance by slot {acceptance}", flush=True)
  if "b1_l2r_k4_tokens_per_call" in results:
    results["tokens_per_call_k4"] = results["b1_l2r_k4_tokens_per_call"]
    results["speedup_vs_sequential_k4"] = results["b1_l2r_k4_speedup"]
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
