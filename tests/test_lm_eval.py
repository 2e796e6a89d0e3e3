"""The lm-evaluation-harness model, offline: `a3-lm-eval` runs two local tasks (a PIQA
multiple choice and a perplexity task, tests/fixtures/lm_eval/) against a tiny export,
once per module; its numbers equal a3-eval's on the same items. Skips without lm-eval."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                reason="lm-eval is not installed (pip install -e '.[lm-eval]')")

from a3_jax import evaluate  # noqa: E402
from a3_jax.convert.loader import load_model  # noqa: E402
from a3_jax.tasks import multiple_choice, run, scoring  # noqa: E402
from cli_helpers import tiny_export  # noqa: E402

HERE = os.path.dirname(__file__)
TASKS_DIR = os.path.join(HERE, "fixtures", "lm_eval")
PIQA = os.path.join(HERE, "fixtures", "tasks", "piqa.jsonl")
WINDOW, CONTEXT = 32, 8


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
  """(export, results JSON, samples per task) of one `a3-lm-eval` run, in process."""
  tmp = tmp_path_factory.mktemp("lm_eval")
  export = tiny_export(tmp)
  from a3_jax.cli.lm_eval_harness import main
  with pytest.MonkeyPatch.context() as env:  # no hub: datasets and the hub stay offline
    env.setenv("HF_DATASETS_OFFLINE", "1")
    env.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--model", "a3_jax", "--model_args",
                 f"pretrained={export},window={WINDOW},context={CONTEXT}", "--batch_size", "4",
                 "--tasks", "a3_piqa_local,a3_rolling_local", "--include_path", TASKS_DIR,
                 "--output_path", str(tmp / "results"), "--log_samples"]) == 0
  [results_file] = glob.glob(str(tmp / "results" / "**" / "results_*.json"), recursive=True)
  # lm-eval's layout: OUTPUT_PATH/<the pretrained= path, sanitized>/results_<date>.json
  assert os.path.basename(os.path.dirname(results_file)).endswith("export")
  with open(results_file) as f:
    results = json.load(f)
  samples = {}
  for task in ("a3_piqa_local", "a3_rolling_local"):
    [path] = glob.glob(str(tmp / "results" / "**" / f"samples_{task}_*.jsonl"), recursive=True)
    with open(path) as f:
      samples[task] = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
  return export, results, samples


def test_multiple_choice_equals_a3_eval_task(harness):
  export, results, samples = harness
  params, config, tokenizer = load_model(export)
  examples = multiple_choice.load_examples("piqa", PIQA)
  pairs = [scoring.encode_pair(tokenizer, c, x) for ex in examples for c, x in ex.choices]
  expected, _ = scoring.loglikelihoods(params, config, pairs)
  got = [float(resp[0][0]) for s in samples["a3_piqa_local"] for resp in s["resps"]]  # logged as text
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
  a3_eval = run.run_task("piqa", PIQA, params, config, tokenizer)
  assert results["results"]["a3_piqa_local"]["acc,none"] == pytest.approx(a3_eval["accuracy"])
  assert [int(s["target"]) for s in samples["a3_piqa_local"]] == [ex.label for ex in examples]


def test_rolling_equals_a3_eval_exact_nll(harness):
  export, results, samples = harness
  params, config, tokenizer = load_model(export)
  docs = samples["a3_rolling_local"]
  ids = [tokenizer.encode(s["doc"]["text"]) for s in docs]
  assert max(len(t) for t in ids) > WINDOW  # the windows with context are exercised
  expected = evaluate.score_texts(params, config, ids, "ar", window=WINDOW, context=CONTEXT)
  got = np.asarray([float(s["resps"][0][0]) for s in docs])
  per_token = np.abs(got - expected.logp_per_text[0]) / np.asarray([len(t) for t in ids])
  assert per_token.max() < 1e-4
  words = sum(len(s["doc"]["text"].split()) for s in docs)
  word_ppl = results["results"]["a3_rolling_local"]["word_perplexity,none"]
  assert word_ppl == pytest.approx(np.exp(expected.nll_per_order[0] / words), rel=1e-4)


class _Request:
  def __init__(self, *args):
    self.args = args


@pytest.mark.parametrize("decoder", ["group", "dynamic"])
def test_generate_until_is_our_decoder(harness, decoder):
  """Greedy generation equals tasks.fill's A3 decoding (group: Algorithm 1; dynamic:
  Algorithm 2, confidence) of the same prompts in the same padded batch."""
  from a3_jax.lm_eval_model import A3JaxLM
  from a3_jax.tasks import fill
  lm = A3JaxLM(pretrained=harness[0], batch_size=4, max_gen_toks=6, decoder=decoder)
  prompts = ["When shall we three", "Fair is foul", "If music be the food of love"]
  kwargs = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}
  texts = lm.generate_until([_Request(p, kwargs) for p in prompts])
  ids = [lm.tokenizer.encode(p) for p in prompts]
  # The adapter's layout: longest prompt first, 4 rows, a power-of-two width.
  order = sorted(range(3), key=lambda i: -len(ids[i]))
  width = 16
  assert max(len(t) for t in ids) + 6 <= width
  tokens = np.zeros((4, width), np.int32)
  known, valid = np.zeros((2, 4, width), bool)
  for r, i in enumerate(order):
    n = len(ids[i])
    tokens[r, :n], known[r, :n], valid[r, :n + 6] = ids[i], True, True
  out, _ = fill.fill(lm.params, lm.config, tokens, known, valid,
                     method={"group": "a3", "dynamic": "a3-dynamic"}[decoder],
                     eos_id=lm.tokenizer.eos_id)
  for r, i in enumerate(order):
    new = [int(x) for x in out[r, len(ids[i]):len(ids[i]) + 6]]
    if lm.tokenizer.eos_id in new:
      new = new[:new.index(lm.tokenizer.eos_id)]
    expected = lm.tokenizer.decode(ids[i] + new)[len(lm.tokenizer.decode(ids[i])):]
    assert texts[i] == expected.split("\n\n")[0]
  assert any(texts)
  if decoder == "group":  # the stop strings, and scoring under another grouping
    pieces = lm.tokenizer.encode("Fair is foul, and foul is fair")
    assert lm._continuation(pieces[:2], pieces[2:], [", and", "zzz"]) == " foul"
    pair = [_Request("Question: To make a hard boiled egg,\nAnswer:", " place the egg in water")]
    ar = lm.loglikelihood(pair)[0][0]
    lm.grouping = "one"
    assert lm.loglikelihood(pair)[0][0] != pytest.approx(ar, abs=1e-3)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "pretrained \\(or checkpoint\\) is required"),
    ({"pretrained": "x", "checkpoint": "y"}, "different checkpoints"),
    ({"pretrained": "x", "batch_size": "auto"}, "'auto' is not supported"),
    ({"pretrained": "x", "grouping": "spiral"}, "unknown target grouping"),
    ({"pretrained": "x", "decoder": "beam"}, "decoder must be one of"),
    ({"pretrained": "x", "criterion": "luck"}, "criterion must be one of"),
])
def test_bad_model_args_are_clear_errors(kwargs, message):
  from a3_jax.lm_eval_model import A3JaxLM
  with pytest.raises(ValueError, match=message):
    A3JaxLM(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"window": "abc"}, "window=abc is not an integer"),
    ({"context": "-1"}, "context must be an integer >= 0"),
    ({"seed": "1.5"}, "seed=1.5 is not an integer"),
])
def test_integer_model_args_are_checked(kwargs, message):
  from a3_jax.lm_eval_model import A3JaxLM
  with pytest.raises(ValueError, match=message):
    A3JaxLM(pretrained="x", **kwargs)


def test_model_defaults_to_a3_jax_and_help_lists_its_args(capsys):
  from a3_jax.cli.lm_eval_harness import lm_eval_argv, main
  assert lm_eval_argv(["--tasks", "piqa"]) == ["--model", "a3_jax", "--tasks", "piqa"]
  assert lm_eval_argv(["--model=hf", "--tasks", "piqa"]) == ["--model=hf", "--tasks", "piqa"]
  assert lm_eval_argv(["ls", "tasks"]) == ["ls", "tasks"]
  with pytest.raises(SystemExit):
    main(["--help"])
  out = capsys.readouterr().out
  assert "rolling_grouping  loglikelihood_rolling's grouping" in out and "--model_args" in out
