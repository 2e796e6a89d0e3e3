"""a3-plot on a hand-written metrics.jsonl: axes per unit, --out forms, bad values skipped."""

import json
import os

import pytest

from cli_helpers import assert_one_line_error, run_main


@pytest.fixture
def workdir(tmp_path):
  records = [{"step": s, "loss": 3.0 - s / 100, "stage": "causal" if s < 50 else "ar"}
             for s in range(1, 101)]
  records[10]["loss"] = "nan?"  # written by hand, or by another tool: skipped, said
  records += [{"step": s, "split": "validation", "nll_ar": 2.5 - s / 200,
               "nll_ar_per_char": 0.6 - s / 1000} for s in (50, 100)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return tmp_path


def _axes_of(png_path):
  """The labels the figure was drawn with (matplotlib's own objects, before saving)."""
  import matplotlib.pyplot as plt
  from a3_jax import plot
  seen = {}
  close = plt.close
  def keep(fig):
    seen["axes"] = [(ax.get_ylabel(), [l.get_label() for l in ax.get_lines()
                                       if not l.get_label().startswith("_")])
                    for ax in fig.axes]
    close(fig)
  plt.close = keep
  try:
    plot.plot_run(os.path.dirname(png_path), png_path)
  finally:
    plt.close = close
  return seen["axes"]


def test_units_on_separate_axes_and_bad_loss_skipped(workdir, capsys):
  axes = _axes_of(str(workdir / "c.png"))
  assert axes == [("nats per token", ["train loss (current stage)", "validation ar"]),
                  ("nats per character", ["validation ar"])]
  assert "skipped 1 training record(s) whose 'loss'" in capsys.readouterr().err
  assert os.path.getsize(workdir / "c.png") > 0


def test_out_names_a_directory_or_a_known_image_type(workdir, tmp_path):
  code, out, err = run_main("a3_jax.cli.plot", str(workdir), f"--out={tmp_path}")
  assert code == 0 and out.strip() == str(tmp_path / "curves.png"), err
  assert_one_line_error(run_main("a3_jax.cli.plot", str(workdir), "--out=curves.xyz"),
                        "a3-plot", "unknown image type .xyz")
  assert not os.path.exists("curves.xyz")
