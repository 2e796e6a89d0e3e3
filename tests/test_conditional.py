"""Exact conditional scoring log p(x_A | x_B): one batched pass == brute force by
separate passes; marked-span texts; the a3-eval mode."""

import jax
import numpy as np
import pytest
from flax.linen import meta

from a3_jax import conditional, marked
from a3_jax.config import get_preset
from a3_jax.model import A3LM, init_params
from a3_jax.tokenizer import load_tokenizer

CFG = get_preset("tiny", init_std=0.3, query_init_scale=0.3)


@pytest.fixture(scope="module")
def params():
  return meta.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(2)))


@jax.jit
def _query_logits(params, tokens, groups, seg, pos):
  return A3LM(CFG).apply(params, tokens, groups, seg, pos)["query"]


def _brute_force(params, tokens, groups):
  """sum_k sum_{i in G_k} log p(x_i | x_B, x_{G<k}): one run of the full model per
  target group, holding only the condition, the earlier groups and group k (absent
  tokens and later groups physically removed, positions kept), group k's own tokens
  scrambled (its predictions must not see them)."""
  rng = np.random.default_rng(9)
  total, width = 0.0, 32
  for k in np.unique(groups[groups >= 1]):
    keep = np.flatnonzero((groups >= 0) & (groups <= k))
    n, target = len(keep), groups[keep] == k
    sub, grp, seg, pos = (np.zeros((1, width), np.int32) for _ in range(4))
    sub[0, :n] = np.where(target, rng.integers(0, CFG.vocab_size, n), tokens[keep])
    grp[0, :n], seg[0, :n], pos[0, :n] = groups[keep], 1, keep
    logits = _query_logits(params, sub, grp, seg, pos)[0, :n]
    logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))
    total += float(logp[np.flatnonzero(target), tokens[keep][target]].sum())
  return total


def _random_item(rng, n):
  """tokens [n] and group ids: a random non-contiguous condition, target and absent
  set, the target in a random grouping and order (ids with gaps)."""
  tokens = rng.integers(0, CFG.vocab_size, n).astype(np.int32)
  role = rng.choice([-1, 0, 1], size=n, p=[0.3, 0.35, 0.35])
  role[rng.integers(n)] = 1
  targets = np.flatnonzero(role == 1)
  ids = rng.choice(np.arange(1, 3 * n), size=len(targets), replace=True)
  groups = np.where(role == 1, 0, role).astype(np.int32)
  groups[targets] = ids
  return tokens, groups


def test_one_batched_pass_equals_brute_force(params):
  rng = np.random.default_rng(0)
  items = [_random_item(rng, n) for n in (5, 9, 14, 20, 7)]
  scores = conditional.conditional_logprobs(params, CFG, [t for t, _ in items],
                                            [g for _, g in items], batch_size=3)
  expected = [_brute_force(params, t, g) for t, g in items]
  np.testing.assert_allclose(scores.logp, expected, rtol=1e-5, atol=1e-4)
  assert list(scores.targets) == [int(np.sum(g >= 1)) for _, g in items]
  for lp, s in zip(scores.token_logp, scores.logp):
    np.testing.assert_allclose(lp.sum(), s, rtol=1e-6)


def test_absent_tokens_do_not_matter_and_groupings_differ(params):
  rng = np.random.default_rng(1)
  tokens, groups = _random_item(rng, 16)
  other = np.where(groups == -1, rng.integers(0, CFG.vocab_size, 16), tokens)
  a, b = (conditional.conditional_logprobs(params, CFG, [t], [groups]).logp[0]
          for t in (tokens, other))
  assert a == pytest.approx(b, abs=1e-6)
  # Moving a condition token (not its value) changes the answer: positions are kept.
  target = np.flatnonzero(groups >= 1)
  per = {}
  for name in ("ar", "one", "block:2", "perm:2"):
    g = groups.copy()
    g[target] = conditional.target_groups(len(target), name, seed=3)
    per[name] = conditional.conditional_logprobs(params, CFG, [tokens], [g]).logp[0]
    assert per[name] == pytest.approx(_brute_force(params, tokens, g), abs=1e-4)
  assert len({round(v, 4) for v in per.values()}) > 1


def test_greedy_flag_is_the_argmax(params):
  groups = np.array([0, 0, 0, 0, 1, 2, 3, -1, 4, 5], np.int32)
  keep = np.flatnonzero(groups >= 0)
  tokens = np.arange(10, dtype=np.int32)
  best = tokens.copy()
  for k in range(1, 6):  # greedy decoding, group by group (a group sees the earlier ones)
    logits = _query_logits(params, best[keep][None], groups[keep][None],
                           np.ones((1, len(keep)), np.int32), keep[None].astype(np.int32))[0]
    at = np.flatnonzero(groups[keep] == k)
    best[keep[at]] = np.asarray(logits).argmax(-1)[at]
  assert conditional.conditional_logprobs(params, CFG, [best], [groups]).greedy[0]
  worse = np.where(groups == 5, (best + 1) % CFG.vocab_size, best)
  assert not conditional.conditional_logprobs(params, CFG, [worse], [groups]).greedy[0]


def test_target_groups():
  assert list(conditional.target_groups(5, "ar")) == [1, 2, 3, 4, 5]
  assert list(conditional.target_groups(5, "one")) == [1] * 5
  assert list(conditional.target_groups(5, "block:2")) == [1, 1, 2, 2, 3]
  assert list(conditional.target_groups(4, "spans", span_ids=[3, 3, 7, 9])) == [1, 1, 2, 3]
  perm = conditional.target_groups(6, "perm:2", seed=1)
  assert sorted(perm) == [1, 1, 2, 2, 3, 3]
  assert list(perm) == list(conditional.target_groups(6, "perm:2", seed=1))
  for bad, message in (("ar:2", "unknown target grouping"), ("block:0", "positive"),
                       ("spans", "needs the span")):
    with pytest.raises(ValueError, match=message):
      conditional.target_groups(3, bad)


@pytest.mark.parametrize("groups,message", [
    ([0, 0, -1], "no target"),
    ([0, -2, 1], "must be -1"),
])
def test_bad_items_are_clear_errors(params, groups, message):
  with pytest.raises(ValueError, match=message):
    conditional.conditional_logprobs(params, CFG, [[1, 2, 3]], [groups])


# ---------------------------------------------------------------- marked texts


def test_marked_segments_and_roles():
  tok = load_tokenizer()
  item = marked.encode_marked(tok, "{{Fair is}} [[foul]] and [[foul]] {{is fair}}")
  pieces = marked.segments("{{Fair is}} [[foul]] and [[foul]] {{is fair}}")
  assert pieces == [("condition", "Fair is"), ("target", " foul"), ("absent", " and"),
                    ("target", " foul"), ("condition", " is fair")]
  assert tok.decode(item.tokens) == "Fair is foul and foul is fair"
  assert tok.decode(item.tokens[item.role == 1]).split() == ["foul", "foul"]
  assert len(set(item.span[item.role == 1])) == 2
  whole = marked.encode_marked(tok, "[[Fair is foul]]", unmarked="condition")
  assert list(whole.tokens) == tok.encode("Fair is foul")
  assert list(marked.encode_marked(tok, "Fair [[is]] foul", unmarked="condition").role) \
      .count(0) >= 2
  for bad, message in (("no spans", "no \\[\\[target\\]\\]"), ("[[a [[b]] c]]", "stray"),
                       ("{{x}} [[ ]]", "empty target"), ("[[a]] }}", "stray")):
    with pytest.raises(ValueError, match=message):
      marked.segments(bad)


def test_score_marked_equals_conditional(params):
  tok = load_tokenizer()
  cfg = get_preset("tiny", vocab_size=tok.vocab_size)
  p = meta.unbox(jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0)))
  texts = ["{{When shall we}} [[three meet]] again {{in thunder}}",
           "[[When shall]] we {{three}} [[meet again]]"]
  out = marked.score_marked(p, cfg, tok, texts, grouping="spans")
  for text, r in zip(texts, out):
    item = marked.encode_marked(tok, text)
    g = item.role.copy()
    _, g[item.role == 1] = np.unique(item.span[item.role == 1], return_inverse=True)
    g[item.role == 1] += 1
    expected = conditional.conditional_logprobs(p, cfg, [item.tokens], [g]).logp[0]
    assert r["logp"] == pytest.approx(expected, abs=1e-5)
    assert r["target_tokens"] == len(r["targets"]) and r["absent_tokens"] > 0
  assert {t["group"] for t in out[1]["targets"]} == {1, 2}
  assert "log p(A|B)" in marked.format_marked(out)


# ---------------------------------------------------------------- a3-eval --conditional


def test_cli_conditional(tmp_path, capsys):
  import json
  from a3_jax.cli import eval as eval_cli
  from a3_jax.convert.loader import load_model
  from cli_helpers import tiny_export
  export = tiny_export(tmp_path)
  texts = ["{{When shall we}} [[three meet]] again", "[[When]] shall {{we three}} [[meet]]"]
  assert eval_cli.main([f"--checkpoint={export}", *(f"--conditional={t}" for t in texts),
                        "--target_grouping=perm:2", "--seed=4", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)["results"]
  p, cfg, tok = load_model(export)
  expected = marked.score_marked(p, cfg, tok, texts, grouping="perm:2", seed=4)
  assert [r["logp"] for r in out] == pytest.approx([r["logp"] for r in expected], abs=1e-5)
  for args, message in ((["--conditional=no target"], "has no [[target]] span"),
                        (["--conditional=[[a]]", "--target_grouping=spiral"],
                         "unknown target grouping 'spiral'"),
                        (["--conditional=[[a]]", "--head=content"], "needs --head=query")):
    with pytest.raises(SystemExit) as exit_info:
      eval_cli.main([f"--checkpoint={export}", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("a3-eval: error:") and message in err[0], err
