"""Exact likelihood: one pass == brute force per group; content head == causal LM; windows."""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest
from flax.linen import meta

from a3_jax import evaluate
from cli_helpers import assert_one_line_error, run_main, run_module, tiny_export

from a3_jax.config import get_preset
from a3_jax.grouping import parse_strategy
from a3_jax.model import A3LM, init_params

CFG = get_preset("tiny", init_std=0.3, query_init_scale=0.3)


@pytest.fixture(scope="module")
def params():
  return meta.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(1)))


@jax.jit
def _query_logits(params, tokens, groups, seg, pos):
  return A3LM(CFG).apply(params, tokens, groups, seg, pos)["query"]


@jax.jit
def _content_logits(params, tokens):
  groups = np.arange(tokens.shape[1])[None]
  return A3LM(CFG).apply(params, tokens, groups, streams="content")["content"]


def _text(n, seed=0):
  return np.random.default_rng(seed).integers(0, CFG.vocab_size, n).astype(np.int32)


def _brute_force_logp(params, tokens, groups):
  """sum_k sum_{i in G_k} log p(x_i | x_{G<k}), one model run per group, with the
  tokens of later groups removed and the targets of group k scrambled. (The kept
  tokens are followed by segment-0 padding up to 32, so one program serves all runs.)"""
  total = 0.0
  rng = np.random.default_rng(123)
  width = 32
  for k in np.unique(groups):
    keep = np.flatnonzero(groups <= k)
    n = len(keep)
    target = groups[keep] == k
    sub, grp, seg, pos = (np.zeros((1, width), np.int32) for _ in range(4))
    sub[0, :n] = np.where(target, rng.integers(0, CFG.vocab_size, n), tokens[keep])
    grp[0, :n], seg[0, :n], pos[0, :n] = groups[keep], 1, keep
    logits = _query_logits(params, sub, grp, seg, pos)[0, :n]
    logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))
    total += float(logp[np.flatnonzero(target), tokens[keep][target]].sum())
  return total


@pytest.mark.parametrize("grouping", ["ar", "block:3", "perm:4"])
def test_one_pass_equals_brute_force_per_group(params, grouping):
  tokens = _text(13)
  result = evaluate.score_texts(params, CFG, [tokens], grouping, orders=2, seed=7)
  for o in range(result.logp_per_text.shape[0]):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(7), o), 0), 0)
    groups = evaluate.window_groups(parse_strategy(grouping), key, 0, len(tokens))
    expected = _brute_force_logp(params, tokens, groups)
    np.testing.assert_allclose(result.logp_per_text[o, 0], expected, rtol=1e-5, atol=1e-4)
  assert result.tokens == len(tokens)


def test_windows_with_context_equal_brute_force(params):
  tokens = _text(30, seed=3)
  result = evaluate.score_texts(params, CFG, [tokens], "block:2", window=12, context=4)
  expected = 0.0
  for start, stop, n_ctx in evaluate.text_windows(len(tokens), 12, 4):
    groups = evaluate.window_groups(parse_strategy("block:2"), None, n_ctx, stop - start)
    # The brute force scores the context groups too: subtract their terms.
    full = _brute_force_logp(params, tokens[start:stop], groups)
    ctx = _brute_force_logp(params, tokens[start:start + n_ctx], groups[:n_ctx]) if n_ctx else 0.0
    expected += full - ctx
  np.testing.assert_allclose(result.logp_per_text[0, 0], expected, rtol=1e-5, atol=1e-4)
  assert result.tokens == len(tokens)


@pytest.mark.parametrize("window,context,count", [(64, 0, 24), (10, 3, 24), (10, 0, 22)])
def test_content_head_equals_causal_lm(params, window, context, count):
  tokens = _text(25, seed=5)
  result = evaluate.score_texts(params, CFG, [tokens], "ar", head="content", window=window,
                                context=context)
  expected, scored = 0.0, 0
  for start, stop, n_ctx in evaluate.text_windows(len(tokens), window, context):
    piece = tokens[start:stop]
    logits = _content_logits(params, piece[None])[0]
    logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))
    for i in range(max(n_ctx, 1), len(piece)):
      expected += float(logp[i - 1, piece[i]])
      scored += 1
  np.testing.assert_allclose(-result.nll_per_order[0], expected, rtol=1e-5, atol=1e-4)
  assert result.tokens == scored == count  # each window without context loses its first token


def test_text_windows_cover_every_token_once():
  for n in range(1, 40):
    for window in (1, 4, 7):
      for context in range(window):
        windows = evaluate.text_windows(n, window, context)
        scored = [i for start, stop, c in windows for i in range(start + c, stop)]
        assert scored == list(range(n))
        assert all(stop - start <= window for start, stop, _ in windows)


def test_perm_orders_spread_and_mixture(params):
  """Every summary of a perm grouping against the per-order log-likelihoods computed
  here, one teacher-forced pass per (order, text) with the order's group ids."""
  tokens = [_text(16, seed=s) for s in range(3)]
  orders = 4
  result = evaluate.score_texts(params, CFG, tokens, "perm:2", orders=orders, batch_size=5)
  logp = np.zeros((orders, len(tokens)))  # [O, D]
  for o in range(orders):
    for d, ids in enumerate(tokens):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(0), o), d), 0)
      groups = evaluate.window_groups(parse_strategy("perm:2"), key, 0, len(ids))
      ones = np.ones((1, len(ids)), np.int32)
      logits = _query_logits(params, ids[None], groups[None], ones, np.arange(len(ids))[None])
      lp = np.asarray(jax.nn.log_softmax(logits[0].astype(np.float32), axis=-1))
      logp[o, d] = lp[np.arange(len(ids)), ids].sum()
  chex.assert_trees_all_close(result.logp_per_text, logp, rtol=1e-5, atol=1e-4)
  nll_per_order = -logp.sum(axis=1) / 48  # [O], per token
  mixture = -np.sum(np.logaddexp.reduce(logp, axis=0) - np.log(orders)) / 48
  d = result.to_dict()
  assert (d["orders"], d["tokens"]) == (orders, 48)
  want = {"nll_per_token": nll_per_order.mean(), "order_std": nll_per_order.std(),
          "order_min": nll_per_order.min(), "order_max": nll_per_order.max(),
          "mixture_nll_per_token": mixture, "perplexity": np.exp(nll_per_order.mean())}
  chex.assert_trees_all_close({k: d[k] for k in want}, want, rtol=1e-5)
  assert len(set(np.round(nll_per_order, 4))) == orders  # the orders really differ
  # Batch size and padding never change the numbers.
  again = evaluate.score_texts(params, CFG, tokens, "perm:2", orders=orders, batch_size=1)
  chex.assert_trees_all_close(again.logp_per_text, result.logp_per_text, rtol=1e-5)


def test_curve_table_and_plot(params, tmp_path):
  results = evaluate.parallelism_curve(params, CFG, [_text(20)], sizes=(1, 2, 4), orders=2)
  assert [r.grouping for r in results] == ["block:1", "block:2", "block:4",
                                           "perm:1", "perm:2", "perm:4"]
  table = evaluate.curve_table(results)
  assert len(table.splitlines()) == 5 and "±" in table
  path = evaluate.plot_curve(results, str(tmp_path / "curve.png"))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs,message", [
    ({"grouping": "spiral:3"}, "unknown grouping"),
    ({"grouping": "block:4", "head": "content"}, "needs grouping 'ar'"),
    ({"grouping": "mix:ar=1,perm:4=1"}, "mixture"),
    ({"grouping": "ar", "texts": [[]]}, "has 0 tokens"),
    ({"grouping": "ar", "texts": [[5]], "head": "content"}, "needs at least 2"),
])
def test_bad_input_is_a_clear_error(params, kwargs, message):
  kwargs = {"texts": [_text(5)], **kwargs}
  with pytest.raises(ValueError, match=message):
    evaluate.score_texts(params, CFG, **kwargs)


# ---------------------------------------------------------------- the a3-eval command

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tasks")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return tiny_export(tmp_path_factory.mktemp("eval"))


def _eval(*args):
  return run_main("a3_jax.cli.eval", *args)


@pytest.mark.slow
def test_cli_likelihood_curve_and_json(export_dir, tmp_path):
  text = tmp_path / "macbeth.txt"
  text.write_text("When shall we three meet again\nIn thunder, lightning, or in rain?\n" * 3)
  png = tmp_path / "curve.png"
  code, stdout, stderr = _eval(f"--checkpoint={export_dir}", f"--text_file={text}",
                               "--grouping=ar,perm:2", "--orders=2", "--window=32",
                               "--context=8", "--curve", f"--curve_png={png}", "--json")
  assert code == 0, stderr[-2000:]
  out = json.loads(stdout)  # --json: stdout is the one JSON object
  assert [r["grouping"] for r in out["results"]] == ["ar", "perm:2"]
  assert out["results"][1]["orders"] == 2 and out["results"][0]["perplexity"] > 1
  assert len(out["curve"]) == 2 * len(evaluate.CURVE_SIZES) and png.exists()
  assert "parallelism-likelihood curve" in stderr
  code, stdout, stderr = _eval(f"--checkpoint={export_dir}", f"--text_file={text}",
                               "--head=mdm", "--elbo_samples=2", "--json")
  assert code == 0, stderr[-2000:]
  unshifted = json.loads(stdout)
  assert unshifted["results"][0]["nelbo_per_token"] > 0 and not unshifted["mdm_shift"]
  # A DiffuLLaMA-style export (a3-train --mdm_shift) is scored shifted without being told.
  shifted_export = tmp_path / "shifted"
  shutil.copytree(export_dir, shifted_export)
  (shifted_export / "flags.json").write_text(json.dumps({"train": {"mdm_shift": True}}))
  nelbos = {}
  for name, args in {"from_flags": (f"--checkpoint={shifted_export}",),
                     "told": (f"--checkpoint={export_dir}", "--mdm_shift")}.items():
    code, stdout, stderr = _eval(*args, f"--text_file={text}", "--head=mdm",
                                 "--elbo_samples=2", "--json")
    assert code == 0, stderr[-2000:]
    out = json.loads(stdout)
    assert out["mdm_shift"]
    nelbos[name] = out["results"][0]["nelbo_per_token"]
  assert nelbos["from_flags"] == nelbos["told"]
  assert nelbos["told"] != unshifted["results"][0]["nelbo_per_token"]


@pytest.mark.slow
def test_cli_task(export_dir):
  code, stdout, stderr = _eval(f"--checkpoint={export_dir}", "--task=piqa",
                               f"--task_data={os.path.join(FIXTURES, 'piqa.jsonl')}", "--json")
  assert code == 0, stderr[-2000:]
  out = json.loads(stdout)
  assert out["examples"] == 3 and 0 <= out["accuracy"] <= 1


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("case,message", [
    ("empty", "is empty"),
    ("no_tokens", "document 0 is 0 token(s) long"),
    ("one_token_causal", "needs at least 2"),
    ("grouping", "unknown grouping strategy 'spiral:2'"),
    ("task_fields", "missing field 'endings'"),
    ("no_checkpoint", "not an a3_jax export"),
    ("corpus_split", "the embedded corpus has splits"),
])
def test_cli_bad_input_exits_2_with_one_line(export_dir, tmp_path, case, message):
  text = _write(tmp_path, "t.txt", "Fair is foul, and foul is fair.")
  args = {
      "empty": [f"--text_file={_write(tmp_path, 'e.txt', '')}"],
      "no_tokens": [f"--text_file={_write(tmp_path, 'e.jsonl', json.dumps({'text': ''}))}"],
      "one_token_causal": [f"--text_file={_write(tmp_path, 'a.txt', 'a')}", "--head=content"],
      "grouping": [f"--text_file={text}", "--grouping=ar,spiral:2"],
      "task_fields": ["--task=hellaswag",
                      f"--task_data={os.path.join(FIXTURES, 'hellaswag_missing_endings.jsonl')}"],
      "no_checkpoint": [f"--text_file={text}"],
      "corpus_split": ["--text_file=shakespeare:dev"],
  }[case]
  checkpoint = str(tmp_path) if case == "no_checkpoint" else export_dir
  assert_one_line_error(_eval(f"--checkpoint={checkpoint}", *args), "a3-eval", message)


def test_cli_the_program_exits_2_with_one_line(tmp_path):
  """The one subprocess: what a shell sees from `a3-eval` given an empty text file."""
  proc = run_module("a3_jax.cli.eval", f"--checkpoint={tmp_path}",
                    f"--text_file={_write(tmp_path, 'e.txt', '')}")
  assert_one_line_error((proc.returncode, proc.stdout, proc.stderr), "a3-eval", "is empty")
