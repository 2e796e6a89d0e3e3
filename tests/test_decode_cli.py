"""a3-generate: infilling and continuation from an export; bad input exits 2."""

import json

import pytest

from cli_helpers import assert_one_line_error, run_main, run_module, tiny_export


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return tiny_export(tmp_path_factory.mktemp("generate"))


def _generate(*args):
  return run_main("a3_jax.cli.generate", *args)


@pytest.mark.slow
def test_infill_and_continue_json(export_dir):
  from a3_jax.tokenizer import load_tokenizer
  tokenizer = load_tokenizer()
  code, out, err = _generate(f"--checkpoint={export_dir}", "--prompt=Fair is <blank:3> and foul",
                             "--max_new_tokens=4", "--decoder=dynamic", "--commit_per_step=2",
                             "--num_samples=2", "--seed=1", "--json")
  assert code == 0, err[-2000:]
  samples = [json.loads(line) for line in out.strip().splitlines()]
  assert [s["sample"] for s in samples] == [0, 1]
  prefix, middle = tokenizer.encode("Fair is "), tokenizer.encode(" and foul")
  for s in samples:
    n = len(prefix)
    assert s["tokens"][:n] == prefix and s["tokens"][n + 3:n + 3 + len(middle)] == middle
    assert s["groups"][:n] == [0] * n and min(s["groups"][n:n + 3]) >= 1
    assert s["logprob"] < 0 and all(len(step["committed"]) <= 2 for step in s["steps"])
  assert samples[0]["tokens"] != samples[1]["tokens"]


@pytest.mark.slow
def test_group_decoder_text_with_order(export_dir):
  code, out, err = _generate(f"--checkpoint={export_dir}", "--prompt=<blank:4> the king.",
                             "--group_size=2", "--order=random", "--temperature=0",
                             "--show_order")
  assert code == 0, err[-2000:]
  lines = out.strip().splitlines()
  assert lines[0] == "--- sample 0 ---" and lines[1].endswith(" the king.")
  assert "log p = " in lines[2] and "(4 generated tokens, 2 steps)" in lines[2]
  assert lines[3].startswith("step   1: ") and lines[4].startswith("step   2: ")


@pytest.mark.slow
def test_speculative_with_blank_of_unknown_length(export_dir):
  code, out, err = _generate(f"--checkpoint={export_dir}", "--prompt=Fair is <blank:2-5> and foul",
                             "--decoder=speculative", "--draft_size=3", "--order=random",
                             "--length_prior=poisson:3", "--num_samples=2", "--json")
  assert code == 0, err[-2000:]
  samples = [json.loads(line) for line in out.strip().splitlines()]
  choice = samples[0]["length_choice"]
  assert [c["length"] for c in choice["candidates"]] == [2, 3, 4, 5]
  best = max(choice["candidates"], key=lambda c: c["total"])
  assert choice["chosen_length"] == best["length"]
  for s in samples:
    assert s["generated_tokens"] == choice["chosen_length"]
    assert 1 <= s["model_calls"] <= choice["chosen_length"]
    assert sorted(s["groups"])[-choice["chosen_length"]:] == list(
        range(1, choice["chosen_length"] + 1))  # one token per step, in some order


@pytest.mark.parametrize("args,message", [
    (["--prompt=" + "word " * 300 + "<blank:2>"], "more than the model's maximum of 256"),
    (["--prompt=no blanks here"], "nothing to generate"),
    (["--prompt=a <blank:x> b"], "malformed blank"),
    (["--prompt=a <blank:2>", "--decoder=dynamic", "--criterion=surprise"],
     "--criterion=surprise"),
    (["--prompt=a <blank:2>", "--group_size=0"], "--group_size must be >= 1"),
    (["--prompt=a <blank:2>", "--decoder=speculative", "--draft_size=0"],
     "--draft_size must be >= 1"),
    (["--prompt=a <blank:2>", "--checkpoint=NOT_AN_EXPORT"], "not an a3_jax export"),
])
def test_bad_input_exits_2_with_one_line(export_dir, tmp_path, args, message):
  checkpoint = [] if any(a.startswith("--checkpoint") for a in args) else [
      f"--checkpoint={export_dir}"]
  args = [a.replace("NOT_AN_EXPORT", str(tmp_path)) for a in args]
  assert_one_line_error(_generate(*checkpoint, *args), "a3-generate", message)


def test_the_program_exits_2_with_one_line(tmp_path):
  """The one subprocess: what a shell sees from `a3-generate` given a bad checkpoint."""
  proc = run_module("a3_jax.cli.generate", f"--checkpoint={tmp_path}", "--prompt=a <blank:2>")
  assert_one_line_error((proc.returncode, proc.stdout, proc.stderr), "a3-generate",
                        "not an a3_jax export")


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
  """A tiny export that says it was converted from an AR LLaMA (as a3-convert writes)."""
  from a3_jax.export import RUN_FLAGS
  path = tiny_export(tmp_path_factory.mktemp("converted"))
  with open(f"{path}/{RUN_FLAGS}", "w") as f:
    json.dump({"converted_from": "gguf:model.gguf", "query_stream": False}, f)
  return path


@pytest.mark.slow
def test_content_head_continues_causally_and_query_head_warns(converted_dir):
  from a3_jax.tokenizer import load_tokenizer
  prompt = load_tokenizer().encode("ROMEO:")
  code, out, err = _generate(f"--checkpoint={converted_dir}", "--prompt=ROMEO:", "--head=content",
                             "--max_new_tokens=5", "--temperature=0", "--json")
  assert code == 0 and "warning" not in err, err[-2000:]
  sample = json.loads(out)
  assert sample["tokens"][:len(prompt)] == prompt and len(sample["tokens"]) <= len(prompt) + 5
  assert sample["groups"][len(prompt):] == list(range(1, len(sample["groups"]) - len(prompt) + 1))
  code, out, err = _generate(f"--checkpoint={converted_dir}", "--prompt=ROMEO:",
                             "--max_new_tokens=2")
  assert code == 0 and "query stream was never trained" in err and "--head=content" in err


@pytest.mark.parametrize("args,message", [
    (["--decoder=dynamic"], "--decoder=dynamic is for --head=query"),
    (["--prompt=a <blank:2-4> b"], "use <blank:N> with --head=content"),
])
def test_content_head_refuses_query_only_options(converted_dir, args, message):
  args = ["--prompt=a <blank:2>"] * (not any(a.startswith("--prompt") for a in args)) + args
  assert_one_line_error(_generate(f"--checkpoint={converted_dir}", "--head=content", *args),
                        "a3-generate", message)
