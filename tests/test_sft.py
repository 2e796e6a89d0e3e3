"""Fine-tuning on prompts and responses: examples packed whole with roles, the prompt in
group 0 and the response grouped alone, the loss exactly -log p(response | prompt)
(brute force by separate passes), no prompt token scored, a3-eval --responses."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import meta

from a3_jax import grouping, roles
from a3_jax.config import get_preset
from a3_jax.data import pipeline
from a3_jax.errors import UserError
from a3_jax.loss import grouped_nll, loss_weights, next_token_weights
from a3_jax.model import A3LM, init_params, stream_rows
from a3_jax.tokenizer import load_tokenizer
from a3_jax.train.config import TrainConfig
from a3_jax.train.step import batch_groups, loss_stats
from cli_helpers import assert_one_line_error, run_main, tiny_export

TOKENIZER = load_tokenizer()
CFG = get_preset("tiny", vocab_size=TOKENIZER.vocab_size, init_std=0.3, query_init_scale=0.3)
PAIRS = [("Q: two and three?", " five"), ("The king", " is dead, long live the king."),
         ("", " an answer without a prompt"), ("ROMEO: But soft, what light", " through yonder"),
         ("Say yes.", " yes"), ("Count: one two", " three four five six")]


response_groups = jax.jit(grouping.response_groups, static_argnums=(0, 5))


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


@pytest.fixture(scope="module")
def params():
  return meta.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(3)))


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  path = tmp_path_factory.mktemp("sft") / "pairs.jsonl"
  return write_jsonl(path, [{"prompt": p, "response": r} for p, r in PAIRS])


def expected_ids(prompt, response):
  return TOKENIZER.encode(prompt), TOKENIZER.encode(response) + [TOKENIZER.eos_id]


def test_rows_hold_whole_examples_with_roles(examples):
  batches = pipeline.make_eval_batches(f"sft:{examples}", TOKENIZER, seq_len=32, batch_size=2)
  found = []
  for b in batches:
    for tokens, seg, pos, role in zip(b["tokens"], b["segment_ids"], b["positions"], b["roles"]):
      assert np.all((seg == 0) == (role == roles.PADDING))
      for s in np.unique(seg[seg > 0]):
        at = np.flatnonzero(seg == s)
        assert np.array_equal(at, np.arange(at[0], at[0] + len(at)))  # contiguous
        assert np.array_equal(pos[at], np.arange(len(at)))  # positions restart
        r = role[at]
        n_prompt = int(np.sum(r == roles.PROMPT))
        assert np.all(r[:n_prompt] == roles.PROMPT) and np.all(r[n_prompt:] == roles.RESPONSE)
        found.append((tokens[at][:n_prompt].tolist(), tokens[at][n_prompt:].tolist()))
  want = [tuple(expected_ids(p, r)) for p, r in PAIRS]
  assert sorted(found) == sorted(want)  # every example once, whole, never split
  assert max(len(np.unique(b["segment_ids"][i])) for b in batches for i in range(2)) > 2


def test_train_iterator_yields_roles_and_resumes(examples):
  it = pipeline.make_train_iterator(f"sft:{examples}", TOKENIZER, seq_len=32, batch_size=2,
                                    seed=0, shuffle_window=2)
  batch = next(it)
  assert set(batch) == {"tokens", "segment_ids", "positions", "roles"}
  assert batch["roles"].shape == (2, 32) and np.any(batch["roles"] == roles.RESPONSE)
  state = json.loads(json.dumps(it.get_state()))  # as a checkpoint keeps it
  want = [next(it) for _ in range(3)]
  resumed = pipeline.make_train_iterator(f"sft:{examples}", TOKENIZER, seq_len=32,
                                         batch_size=2, seed=0, shuffle_window=2)
  resumed.set_state(state)
  for w in want:
    got = next(resumed)
    assert all(np.array_equal(got[k], w[k]) for k in w)


def test_overlong_examples_refused_or_truncated(tmp_path):
  path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "Q:", "response": " a b c d e f g h"}])
  prompt, response = expected_ids("Q:", " a b c d e f g h")
  seq_len = len(prompt) + len(response) - 2
  with pytest.raises(UserError, match=r"long.jsonl, line 1: .*--seq_len"):
    pipeline.make_eval_batches(f"sft:{path}", TOKENIZER, seq_len=seq_len, batch_size=1)
  (row,) = pipeline.make_eval_batches(f"sft:{path}", TOKENIZER, seq_len=seq_len, batch_size=1,
                                      overlong="truncate")
  assert row["tokens"][0].tolist() == (prompt + response)[:seq_len]
  with pytest.raises(UserError, match="leave no response"):
    pipeline.make_eval_batches(f"sft:{path}", TOKENIZER, seq_len=len(prompt), batch_size=1,
                               overlong="truncate")


@pytest.mark.parametrize("record, message", [
    ({"prompt": "x"}, "'prompt' and 'response'"), ({"prompt": "x", "response": ""}, "empty"),
    ({"messages": [{"role": "user"}]}, "'messages' must be"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "must be the assistant's"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     "has no chat template")])
def test_bad_records_name_the_line(tmp_path, record, message):
  path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, record])
  with pytest.raises(UserError, match=f"bad.jsonl, line 2: .*{message}"):
    pipeline.make_eval_batches(f"sft:{path}", TOKENIZER, seq_len=32, batch_size=1)


SEG = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0]])
POS = np.array([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0]])
ROLE = np.array([[1, 1, 2, 2, 2, 2, 1, 1, 1, 2, 2, 0]])


@pytest.mark.parametrize("spec, want", [
    ("ar", [0, 0, 1, 2, 3, 4, 0, 0, 0, 1, 2, 0]),
    ("block:2", [0, 0, 1, 1, 2, 2, 0, 0, 0, 1, 1, 0])])
def test_prompt_is_group_zero_and_the_response_is_grouped_alone(spec, want):
  groups = response_groups(grouping.parse_strategy(spec), jax.random.key(0), SEG, POS,
                                    ROLE)
  assert groups[0].tolist() == want


def test_perm_and_given_subset_group_the_response_only():
  strategy = grouping.parse_strategy("perm:1")
  for seed in range(4):
    groups = np.asarray(response_groups(strategy, jax.random.key(seed), SEG, POS,
                                                 ROLE))[0]
    assert np.all(groups[ROLE[0] != roles.RESPONSE] == 0)
    assert sorted(groups[2:6]) == [1, 2, 3, 4] and sorted(groups[9:11]) == [1, 2]
  seg, pos = np.ones((64, 40), np.int32), np.broadcast_to(np.arange(40), (64, 40))
  role = np.where(pos < 8, roles.PROMPT, roles.RESPONSE)
  groups = np.asarray(response_groups(grouping.parse_strategy("ar"), jax.random.key(1),
                                               seg, pos, role, given_rate=0.25))
  given = (groups == 0) & (role == roles.RESPONSE)
  assert np.all(groups[role == roles.PROMPT] == 0)
  assert 0.2 < given.sum() / (role == roles.RESPONSE).sum() < 0.3
  for g, is_target in zip(groups, ~given & (role == roles.RESPONSE)):  # ar over the targets left
    assert g[is_target].tolist() == list(range(1, is_target.sum() + 1))


@jax.jit
def _sft_loss_terms(params, tokens, seg, pos, role, groups):
  content, query = stream_rows(groups, seg, pos)
  model = A3LM(CFG)
  _, g, _ = model.apply(params, tokens, content, query, method=A3LM.forward, content_out=False)
  return model.apply(params, g, method=A3LM.logits), loss_weights(groups, seg, roles_BxT=role)


def sft_loss_terms(params, batch, groups):
  """Query-stream logits [B, T, V] of a fine-tuning batch and its loss weights [B, T]."""
  return _sft_loss_terms(params, *(jnp.asarray(batch[k]) for k in (
      "tokens", "segment_ids", "positions", "roles")), jnp.asarray(groups))


@jax.jit
def _query_logp(params, tokens, groups, seg, pos):
  logits = A3LM(CFG).apply(params, tokens, groups, seg, pos)["query"]
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def brute_force(params, tokens, groups):
  """sum over groups k >= 1 of log p(x_{G_k} | x_{G_<k}) of ONE example alone in its row:
  one pass per group holding only groups <= k, group k's own tokens scrambled."""
  rng = np.random.default_rng(5)
  total = 0.0
  for k in np.unique(groups[groups >= 1]):
    keep = np.flatnonzero(groups <= k)
    target = groups[keep] == k
    sub, grp, seg, pos = (np.zeros((1, 32), np.int32) for _ in range(4))
    n = len(keep)
    sub[0, :n] = np.where(target, rng.integers(0, CFG.vocab_size, n), tokens[keep])
    grp[0, :n], seg[0, :n], pos[0, :n] = groups[keep], 1, keep
    logp = np.asarray(_query_logp(params, sub, grp, seg, pos))[0, :n]
    total += float(logp[np.flatnonzero(target), tokens[keep][target]].sum())
  return total


@functools.partial(jax.jit, static_argnames=("curriculum", "given_rate"))
def _train_loss_stats(params, batch, key, *, curriculum, given_rate):
  """The train step's groups and summed loss statistics of one fine-tuning batch."""
  _, groups = batch_groups(curriculum, 0, key, batch, given_rate)
  return groups, loss_stats(A3LM(CFG), TrainConfig(), params, batch, groups, key)


@pytest.mark.parametrize("curriculum, given_rate", [("perm:2:10", 0.0),
                                                    ("mix:ar=0.5,block:3=0.5:10", 0.3)])
def test_sft_loss_is_brute_force_minus_log_p_response_given_prompt(params, examples, curriculum,
                                                                    given_rate):
  """The train step's loss (its grouping, weights and loss) of a packed batch equals the
  sum over examples and groups of separate passes, each example alone."""
  (batch, *_) = pipeline.make_eval_batches(f"sft:{examples}", TOKENIZER, seq_len=32,
                                           batch_size=4)
  groups, stats = _train_loss_stats(
      params, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(7),
      curriculum=grouping.parse_curriculum(curriculum), given_rate=given_rate)
  want, count = 0.0, 0
  groups = np.asarray(groups)
  for r in range(len(batch["tokens"])):
    for s in np.unique(batch["segment_ids"][r][batch["segment_ids"][r] > 0]):
      at = batch["segment_ids"][r] == s
      assert np.all(groups[r][at][batch["roles"][r][at] == roles.PROMPT] == 0)
      want -= brute_force(params, batch["tokens"][r][at], groups[r][at])
      count += int(np.sum(groups[r][at] > 0))
  assert int(stats["count"]) == count > 0
  np.testing.assert_allclose(float(stats["nll"]), want, rtol=2e-5)


def test_no_prompt_token_is_scored_or_seen_by_a_later_query(params, examples):
  (batch, *_) = pipeline.make_eval_batches(f"sft:{examples}", TOKENIZER, seq_len=32,
                                           batch_size=4)
  groups = response_groups(grouping.parse_strategy("perm:2"), jax.random.key(1),
                                    batch["segment_ids"], batch["positions"], batch["roles"],
                                    0.3)
  logits, weights = sft_loss_terms(params, batch, groups)
  tokens = jnp.asarray(batch["tokens"])
  grad = jax.grad(lambda l: grouped_nll(l, tokens, weights)["nll"])(logits)
  read = np.asarray(jnp.any(grad != 0, axis=-1))
  scored = (batch["roles"] == roles.RESPONSE) & (np.asarray(groups) > 0)
  assert np.array_equal(read, scored)  # prompt, given and padding rows are never read
  # A response token's prediction sees only earlier groups of its own example: change
  # every token of its own and later groups, and of the other examples: it stays put.
  nll = np.asarray(jax.nn.log_softmax(logits, -1))
  seg, groups = batch["segment_ids"], np.asarray(groups)
  r, i = map(int, np.argwhere(scored & (groups == 2))[0])
  changed = (seg != seg[r, i]) | (groups >= groups[r, i])
  changed &= ~((seg == seg[r, i]) & (batch["roles"] != roles.RESPONSE))  # prompt kept
  other = dict(batch, tokens=np.where(changed, (batch["tokens"] + 7) % CFG.vocab_size,
                                      batch["tokens"]))
  logits2, _ = sft_loss_terms(params, other, groups)
  np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(logits2, -1))[r, i], nll[r, i],
                             atol=1e-5)
  prompt_at = np.flatnonzero((seg[r] == seg[r, i]) & (batch["roles"][r] == roles.PROMPT))
  if len(prompt_at):  # the prompt, by contrast, is seen
    other = dict(batch, tokens=batch["tokens"].copy())
    other["tokens"][r, prompt_at] = (other["tokens"][r, prompt_at] + 7) % CFG.vocab_size
    logits3, _ = sft_loss_terms(params, other, groups)
    assert not np.allclose(np.asarray(jax.nn.log_softmax(logits3, -1))[r, i], nll[r, i])


def test_next_token_weights_score_response_targets_only():
  seg = jnp.asarray(SEG)
  w = next_token_weights(seg, jnp.asarray(ROLE))
  # target t+1 must share the segment and be a response token
  assert np.asarray(w)[0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0]


def test_eval_responses(tmp_path, examples):
  export = tiny_export(tmp_path)
  code, out, err = run_main("a3_jax.cli.eval", f"--checkpoint={export}",
                            f"--responses={examples}", "--target_grouping=perm:2", "--json")
  assert code == 0, err
  result = json.loads(out)
  assert result["examples"] == len(PAIRS)
  assert result["response_tokens"] == sum(len(expected_ids(p, r)[1]) for p, r in PAIRS)
  assert result["logp"] < 0 and 0 <= result["exact"] <= 1
  assert_one_line_error(run_main("a3_jax.cli.eval", f"--checkpoint={export}",
                                 f"--responses={tmp_path}/none.jsonl"), "a3-eval",
                        "--responses=")


def test_validation_scores_responses_as_a3_eval_does(params, examples, tmp_path):
  """Training validation of fine-tuning data (`ar`) = a3-eval --responses' exact
  log p(response | prompt): two paths, one number. And a causal step scores the
  response tokens alone (those with a token before them)."""
  from a3_jax import responses
  from a3_jax import sharding as shd
  from a3_jax.train.state import state_shardings
  from a3_jax.train.step import make_eval_step
  from a3_jax.train.validation import evaluate
  batches = pipeline.make_eval_batches(f"sft:{examples}", TOKENIZER, seq_len=32, batch_size=4)
  mesh = shd.make_mesh("data:1", jax.devices()[:1])
  with jax.set_mesh(mesh):
    shardings = state_shardings(CFG, TrainConfig(), mesh)
    eval_step = make_eval_step(CFG, TrainConfig(), mesh, shardings)
    out = evaluate(eval_step, params, batches, jax.random.key(0), mesh)
  want = responses.score_responses(params, CFG, TOKENIZER, examples)
  assert out["eval_tokens"] == want["response_tokens"]
  np.testing.assert_allclose(out["nll_ar"], want["nll_per_token"], rtol=1e-5)
  causal = loss_stats(A3LM(CFG), TrainConfig(objective="ar"), params,
                      {k: jnp.asarray(v) for k, v in batches[0].items()}, None)
  b = batches[0]  # every response token but one that starts its example (an empty prompt)
  assert int(causal["count"]) == int(np.sum((b["roles"] == roles.RESPONSE) & (b["positions"] > 0)))


def test_dry_run_and_flag_checks(examples):
  code, out, err = run_main("a3_jax.cli.dry_run", "--preset=tiny", f"--data=sft:{examples}",
                            "--seq_len=32", "--batch_size=8", "--sft_given_rate=0.2",
                            "--sft_overlong=truncate", "--curriculum=mix:ar=0.5,perm:2=0.5:10")
  assert code == 0, err
  assert_one_line_error(run_main("a3_jax.cli.dry_run", "--preset=tiny", "--sft_given_rate=0.2"),
                        "a3-dry-run", "--sft_given_rate applies to fine-tuning data")
  assert_one_line_error(run_main("a3_jax.cli.dry_run", "--preset=tiny", "--objective=mdm",
                                 "--curriculum=ar:10", f"--data=sft:{examples}"),
                        "a3-dry-run", "'mdm' has no prompt-conditioned loss")


def test_examples_are_not_mixed_with_documents(examples):
  with pytest.raises(UserError, match="cannot be mixed"):
    pipeline.make_eval_batches(f"mix:sft:{examples}=0.5,shakespeare=0.5", TOKENIZER,
                               seq_len=32, batch_size=1)
