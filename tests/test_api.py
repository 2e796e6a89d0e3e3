"""The Python API: README's example, run exactly as written, on a tiny export."""

import os
import re

import pytest

from cli_helpers import tiny_export

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _readme_example() -> str:
  with open(README, encoding="utf-8") as f:
    text = f.read()
  section = text[text.index("## Python API"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  os.makedirs("exports")
  tiny_export(tmp_path / "exports")  # writes exports/export
  os.rename("exports/export", "exports/default")
  exec(compile(_readme_example(), "README.md", "exec"), {})
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 + 1 + 1 + 2 + 1, lines
  assert lines[0].startswith("ROMEO.") and lines[3].startswith("ROMEO.")
  assert lines[2].startswith("To be, or") and lines[2].endswith("to be")
  assert [line.split()[0] for line in lines[4:6]] == ["ar", "perm:4"]
  assert float(lines[6]) < 0
