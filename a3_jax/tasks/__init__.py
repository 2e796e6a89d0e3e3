"""The paper's evaluation suite (DiffuLLaMA protocol, docs/paper-notes.md).

  readers.py          task records from jsonl / json / csv files or `tfds.data_source`
  scoring.py          log p(continuation | context) of (context, continuation) pairs
  multiple_choice.py  HellaSwag, WinoGrande, PIQA, SIQA: the answer with the best
                      summed or mean token log-prob
  fill.py             filling blanks: A3 group / dynamic decoding, the causal and the
                      masked-diffusion baselines, all greedy
  generation.py       TriviaQA-style QA: greedy generation, alias matching
  infill.py           ROCStories-style infilling at the gold middle length: ROUGE-1/2/L
  run.py              `run_task(name, ...)`: one task end to end (what a3-eval calls)
"""

# The names a3-eval's flags list, importable without JAX (the modules check they agree).
MULTIPLE_CHOICE = ("hellaswag", "piqa", "siqa", "winogrande")
TASKS = MULTIPLE_CHOICE + ("triviaqa", "rocstories")
FILL_METHODS = ("a3", "a3-dynamic", "ar", "mdm")  # fill.py
