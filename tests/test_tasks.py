"""The task suite: readers, exact answer scoring (by hand and on an overfit model),
alias matching, generation and infilling with every fill method, ROUGE."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.linen import meta

from a3_jax import teacher_forced
from a3_jax.config import get_preset
from a3_jax.model import A3LM, init_params
from a3_jax.tasks import fill, generation, infill, multiple_choice, readers, run, scoring

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tasks")
MC_FILES = {"hellaswag": "hellaswag.jsonl", "winogrande": "winogrande.jsonl",
            "piqa": "piqa.jsonl", "siqa": "siqa.jsonl"}


def _fixture(name):
  return os.path.join(FIXTURES, name)


class WordTokenizer:
  """Words, punctuation and newlines of the fixtures as ids (a small vocabulary keeps
  the test model fast): 0 pad, 1 unk, 2 bos, 3 eos."""

  pad_id, bos_id, eos_id = 0, 2, 3
  _split = re.compile(r"\w+|[^\w\s]|\n")

  def __init__(self, texts):
    words = sorted({w for t in texts for w in self._split.findall(t)})
    self.vocab = ["<pad>", "<unk>", "<s>", "</s>"] + words
    self.ids = {w: i for i, w in enumerate(self.vocab)}
    self.vocab_size = len(self.vocab)

  def encode(self, text):
    return [self.ids.get(w, 1) for w in self._split.findall(text)]

  def decode(self, ids):
    return " ".join(self.vocab[int(i)] for i in ids if int(i) > 3).replace(" \n ", "\n")


def _all_examples():
  mc = {task: multiple_choice.load_examples(task, _fixture(f)) for task, f in MC_FILES.items()}
  qa = generation.load_examples(_fixture("triviaqa.jsonl"))
  stories = infill.load_examples(_fixture("rocstories_cloze.csv"))
  return mc, qa, stories


def _texts(mc, qa, stories):
  texts = [c + x for exs in mc.values() for ex in exs for c, x in ex.choices]
  texts += [generation.prompt(ex.question) + " " + ex.aliases[0] + "\n" for ex in qa]
  return texts + [" ".join(s.sentences) for s in stories]


# ---------------------------------------------------------------- readers


def test_readers_parse_every_fixture_format():
  mc, qa, stories = _all_examples()
  hs = mc["hellaswag"]
  assert [ex.label for ex in hs] == [3, 3, 0] and len(hs[0].choices) == 4
  assert hs[0].choices[0][0].startswith("Removing ice from car: Then, the man")
  assert "[" not in hs[2].choices[0][0] and "How to keep a tidy garden." in hs[2].choices[0][0]
  assert hs[0].choices[3][1] == " , the man continues removing the snow on his car."
  wg = mc["winogrande"][0]
  assert wg.choices[0][0].endswith("so Sarah") and wg.choices[1][0].endswith("so Maria")
  assert wg.choices[0][1] == wg.choices[1][1] == " always got the harder cases."
  assert [ex.label for ex in mc["piqa"]] == [0, 0, 1]  # from piqa-labels.lst
  assert mc["piqa"][1].choices[0][0] == "Question: To make a hard boiled egg,\nAnswer: "
  assert [ex.label for ex in mc["siqa"]] == [2, 0, 0]
  assert mc["siqa"][0].choices[0][0] == ("Question: Tracy didn't go home that evening and "
                                         "resisted Riley's attacks. What does Tracy need to "
                                         "do before this?\nAnswer: ")
  assert "Paris" in qa[0].aliases and "william shakespeare" in qa[1].aliases
  assert generation.prompt(qa[1].question) == "Question: Who wrote the play Macbeth?\nAnswer:"
  original = generation.load_examples(_fixture("triviaqa_original.json"))
  assert original[0].aliases[0] == "Jupiter"
  assert stories[0].middle == "It was not long before Rick got shot in a robbery."
  assert stories[0].suffix == "The incident caused him to turn a new leaf. He is happy now."
  plain = infill.load_examples(_fixture("rocstories.csv"))
  assert plain[0].prefix.startswith("Kelly studied") and plain[0].suffix.endswith("grade.")


def test_tfds_style_records_are_decoded():
  """tfds.data_source yields bytes and numpy arrays; the parsers see plain values."""
  record = readers._plain({"context": b"A man sits.", "activity_label": b"Sitting",
                           "endings": np.array([b"He stands.", b"He sleeps."], object),
                           "label": np.int32(1)})
  ex = multiple_choice.hellaswag(record, "tfds record 0")
  assert ex.label == 1 and ex.choices[1][1] == " He sleeps."
  wg = multiple_choice.winogrande(readers._plain(
      {"sentence": b"A _ b.", "option1": b"x", "option2": b"y", "label": np.int64(1)}), "r")
  assert wg.label == 1


@pytest.mark.parametrize("task,name,message", [
    ("hellaswag", "hellaswag_missing_endings.jsonl", "record 0: missing field 'endings'"),
    ("piqa", "winogrande.jsonl", "missing field 'goal'"),
    ("siqa", "nope.jsonl", "does not exist"),
    ("winogrande", "piqa-labels.lst", "unknown format"),
])
def test_bad_task_files_are_clear_errors(task, name, message):
  with pytest.raises(ValueError, match=message):
    multiple_choice.load_examples(task, _fixture(name))


def test_bad_generation_records_are_clear_errors(tmp_path):
  path = tmp_path / "qa.jsonl"
  path.write_text('{"question": "Who?"}\n')
  with pytest.raises(ValueError, match="missing field 'answer'"):
    generation.load_examples(str(path))
  path = tmp_path / "stories.csv"
  path.write_text("sentence1,sentence2\na,b\n")
  with pytest.raises(ValueError, match="missing field 'sentence3'"):
    infill.load_examples(str(path))


def test_encode_pair_follows_lm_eval():
  from a3_jax.tokenizer import load_tokenizer
  tok = load_tokenizer()
  ctx, cont = scoring.encode_pair(tok, "Question: Who?\nAnswer: ", "Paris")
  assert tok.decode(ctx + cont) == "Question: Who?\nAnswer: Paris"
  assert ctx == tok.encode("Question: Who?\nAnswer:") and len(cont) >= 1


# ---------------------------------------------------------------- exact scoring by hand

CFG_HAND = get_preset("tiny", init_std=0.5, query_init_scale=1.0)


def _uniform_attention_params(seed=0):
  """Random params with q = k = 0 (uniform attention over visible keys) and a zero
  MLP output, so one layer adds o(mean of visible values) to each row."""
  p = meta.unbox(init_params(CFG_HAND, jax.random.key(seed)))["params"]
  layers = dict(p["layers"])
  layers["attn"] = {**layers["attn"], "q_proj": jnp.zeros_like(layers["attn"]["q_proj"]),
                    "k_proj": jnp.zeros_like(layers["attn"]["k_proj"])}
  layers["mlp"] = {**layers["mlp"], "down_proj": jnp.zeros_like(layers["mlp"]["down_proj"])}
  return {"params": {**p, "layers": layers}}


def _rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def numpy_query_logprobs(params, tokens, groups):
  """The A3 query stream by hand for uniform-attention params: [T, V] log-probs."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
  cfg = CFG_HAND
  h = p["embed"][tokens]
  g = np.broadcast_to(p["query_embed"], h.shape).copy()
  per_kv = cfg.num_heads // cfg.num_kv_heads
  for l in range(cfg.num_layers):
    v = np.einsum("TD,DKH->TKH", _rms(h, p["layers"]["attn_norm"]["scale"][l], cfg.rms_eps),
                  p["layers"]["attn"]["v_proj"][l])
    v = np.repeat(v, per_kv, axis=1)  # query head n reads kv head n // per_kv
    out = []
    for strict in (False, True):  # content rows see g_j <= g_i, query rows g_j < g_i
      vis = groups[None, :] < groups[:, None] if strict else groups[None, :] <= groups[:, None]
      mean = np.einsum("ij,jNH->iNH", vis, v) / np.maximum(vis.sum(1), 1)[:, None, None]
      out.append(np.einsum("TNH,NHD->TD", mean, p["layers"]["attn"]["o_proj"][l]))
    h, g = h + out[0], g + out[1]
  w = p["embed"].T if cfg.tie_embeddings else p["lm_head"]
  logits = _rms(g, p["final_norm"]["scale"], cfg.rms_eps) @ w
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def test_answer_logprob_equals_hand_computation():
  params = _uniform_attention_params()
  rng = np.random.default_rng(0)
  pairs = [(list(rng.integers(4, 256, n_ctx)), list(rng.integers(4, 256, n_cont)))
           for n_ctx, n_cont in ((5, 3), (1, 6), (9, 1), (0, 4))]
  logp, counts = scoring.loglikelihoods(params, CFG_HAND, pairs, batch_size=3)
  for (ctx, cont), got, n in zip(pairs, logp, counts):
    tokens = np.asarray(ctx + cont)
    groups = np.concatenate([np.zeros(len(ctx), int), np.arange(1, len(cont) + 1)])
    lp = numpy_query_logprobs(params, tokens, groups)
    expected = sum(lp[len(ctx) + j, c] for j, c in enumerate(cont))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert n == len(cont)


# ---------------------------------------------------------------- an overfit model

CFG = get_preset("tiny", vocab_size=512)


def _train_rows(tok, mc, qa, stories):
  """Scored rows for both heads, the choice rows of every MC example, and which
  rows are right answers (the LM loss) -- all as arrays [R, W]."""
  rows, right, choices = {"query": [], "content": []}, [], []
  def add(ctx, cont, is_right=True):
    for head in rows:
      rows[head].append(scoring._row(ctx, cont, head, CFG.max_seq_len, tok.bos_id))
    right.append(is_right)
    return len(right) - 1
  for exs in mc.values():
    for ex in exs:
      ids = [add(*scoring.encode_pair(tok, c, x), is_right=i == ex.label)
             for i, (c, x) in enumerate(ex.choices)]
      choices.append((ids, ex.label))
  for ex in qa:
    add(tok.encode(generation.prompt(ex.question)), tok.encode(" " + ex.aliases[0] + "\n"))
  for s in stories:
    # The middle as singleton groups after prefix + suffix (group 0), as a3 decoding fills it.
    pre, mid, suf = tok.encode(s.prefix), tok.encode(s.middle), tok.encode(s.suffix)
    tokens = np.asarray(pre + mid + suf, np.int32)
    groups = np.zeros(len(tokens), np.int32)
    groups[len(pre):len(pre) + len(mid)] = np.arange(1, len(mid) + 1)
    rows["query"].append((tokens, groups, groups > 0))
    rows["content"].append(rows["query"][-1])  # left out of the content head's loss
    right.append(True)
  width = max(len(r[0]) for r in rows["query"] + rows["content"])
  arrays = {}
  for head, rs in rows.items():
    tok_a, grp, seg = (np.zeros((len(rs), width), np.int32) for _ in range(3))
    scored = np.zeros((len(rs), width), bool)
    for i, (t, g, sc) in enumerate(rs):
      tok_a[i, :len(t)], grp[i, :len(t)], seg[i, :len(t)], scored[i, :len(t)] = t, g, 1, sc
    arrays[head] = (tok_a, grp, seg, scored)
  # The causal head cannot see an infill suffix: its loss leaves the story rows out.
  content_ok = np.asarray([i < len(right) - len(stories) for i in range(len(right))])
  return arrays, np.asarray(right), content_ok, choices


@pytest.fixture(scope="module")
def overfit():
  """A tiny model trained (100 steps) until each fixture's right answer is certain:
  the LM loss on right answers plus a cross-entropy over each example's choices."""
  mc, qa, stories = _all_examples()
  tok = WordTokenizer(_texts(mc, qa, stories))
  arrays, right, content_ok, choices = _train_rows(tok, mc, qa, stories)
  idx = np.full((len(choices), 4), 0)
  valid = np.zeros((len(choices), 4), bool)
  for e, (ids, _) in enumerate(choices):
    idx[e, :len(ids)], valid[e, :len(ids)] = ids, True
  labels = np.asarray([label for _, label in choices])
  pos = np.broadcast_to(np.arange(arrays["query"][0].shape[1]), arrays["query"][0].shape)

  def loss_fn(p):
    total = 0.0
    for head, ok in (("query", np.ones_like(content_ok)), ("content", content_ok)):
      tokens, groups, seg, scored = arrays[head]
      lp, _ = teacher_forced.token_scores(A3LM(CFG), p, tokens, groups, seg, pos, head=head)
      s = jnp.sum(jnp.where(scored, lp, 0.0), axis=1)
      total -= jnp.sum(jnp.where(right & ok, s, 0.0)) / np.sum(scored[right & ok])
      logits = jnp.where(valid, s[idx], -1e9)
      total += jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return total

  params = meta.unbox(init_params(CFG, jax.random.key(0)))
  tx = optax.adam(1e-2)

  @jax.jit
  def step(p, opt):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  opt = tx.init(params)
  for _ in range(100):
    params, opt, loss = step(params, opt)
  assert float(loss) < 0.1
  return params, tok, mc, qa, stories


@pytest.mark.slow
@pytest.mark.parametrize("head", ["query", "content"])
def test_overfit_model_picks_every_right_answer(overfit, head):
  params, tok, mc, _, _ = overfit
  for task, examples in mc.items():
    out = multiple_choice.evaluate_choices(params, CFG, tok, examples, head=head,
                                           reduction=multiple_choice.TASKS[task][1])
    assert out["accuracy_sum"] == out["accuracy_mean"] == 1.0, (task, out)


@pytest.mark.slow
def test_overfit_model_answers_and_infills(overfit):
  params, tok, _, qa, stories = overfit
  for method in ("a3", "ar"):
    out = generation.evaluate_qa(params, CFG, tok, qa, method=method, max_new_tokens=6)
    assert out["accuracy"] == 1.0, (method, out["predictions"])
  out = infill.evaluate_infill(params, CFG, tok, stories, method="a3")
  assert out["rouge1"] == out["rougeL"] == 100.0 and out["token_accuracy"] == 1.0
  assert out["model_calls"] == max(len(tok.encode(s.middle)) for s in stories)


@pytest.mark.slow
def test_every_fill_method_runs_and_counts_calls(overfit):
  params, tok, _, _, stories = overfit
  blanks = max(len(tok.encode(s.middle)) for s in stories)
  for method in fill.METHODS:
    out = infill.evaluate_infill(params, CFG, tok, stories, method=method, group_size=3)
    assert set(infill.ROUGE_TYPES) <= set(out) and len(out["predictions"]) == len(stories)
    assert out["model_calls"] == (blanks if method == "ar" else -(-blanks // 3))


@pytest.mark.slow
def test_run_task_dispatches(overfit):
  params, tok, _, _, _ = overfit
  out = run.run_task("piqa", _fixture("piqa.jsonl"), params, CFG, tok, limit=2)
  assert out["examples"] == 2 and out["reduction"] == "sum"
  out = run.run_task("piqa", _fixture("piqa.jsonl"), params, CFG, tok, head="mdm", limit=2)
  assert out["examples"] == 2 and 0.0 <= out["accuracy"] <= 1.0
  with pytest.raises(ValueError, match="unknown task"):
    run.run_task("mmlu", _fixture("piqa.jsonl"), params, CFG, tok)


# ---------------------------------------------------------------- metrics


def test_alias_matching():
  assert generation.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
  assert generation.is_correct("Paris", ["Paris, France", "paris"])
  assert generation.is_correct("It is the city of Paris.", ["Paris"])
  assert not generation.is_correct("Parisian", ["Paris"])
  assert not generation.is_correct("", ["Paris"])


def test_rouge_matches_hand_counts():
  scores = infill.rouge(["the cat sat on the mat"], ["the cat is on the mat"])
  # unigrams: 5 of 6 shared; bigrams: (the cat), (on the), (the mat) of 5
  assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
  assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
  assert scores["rougeL"] == pytest.approx(100 * 5 / 6)
  assert scores["rougeL_se"] == 0.0  # one example
  # per example 100 and 0: mean 50, sample std 70.7, standard error 70.7 / sqrt(2) = 50
  two = infill.rouge(["a b", "c d"], ["a b", "x y"])
  assert two["rouge1"] == pytest.approx(50) and two["rouge1_se"] == pytest.approx(50)
  short = {m: infill.rouge_per_example(["the cat"], ["the cat sat"], m)["rougeL"][0]
           for m in ("precision", "recall")}
  assert short == {"precision": pytest.approx(100), "recall": pytest.approx(100 * 2 / 3)}
  assert infill.rouge_words(" I was happy.....") == ["i", "was", "happy"]
