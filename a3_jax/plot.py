"""Training curves of a run: loss per step and validation NLL, stage starts marked."""

from __future__ import annotations

import os
import sys

from a3_jax.errors import UserError
from a3_jax.metrics import read_metrics


def plot_run(workdir: str, out: str | None = None) -> str:
  """Draws WORKDIR/metrics.jsonl to `out` (default WORKDIR/curves.png); returns its path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not os.path.isdir(workdir):
    raise UserError(f"WORKDIR {workdir} is not a directory")
  out = out or os.path.join(workdir, "curves.png")
  out_dir = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
    raise UserError(f"--out={out}: {out_dir} is not a writable directory")
  records = read_metrics(workdir, report=lambda m: print(f"warning: {m}", file=sys.stderr))
  train = [r for r in records if r.get("split", "train") == "train" and "loss" in r]
  valid = [r for r in records if r.get("split") == "validation"]
  if not train:
    raise UserError(f"{workdir} has no training metrics (metrics.jsonl missing or empty)")
  fig, ax = plt.subplots(figsize=(8, 4.5))
  ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.7,
          label="train loss (current stage)")
  for name in sorted({k for r in valid for k in r if k.startswith("nll_")}):
    points = [(r["step"], r[name]) for r in valid if name in r]
    ax.plot(*zip(*points), marker="o", label=f"validation {name} (nats/token)")
  starts = [(r["step"], r["stage"]) for i, r in enumerate(train)
            if "stage" in r and (i == 0 or train[i - 1].get("stage") != r["stage"])]
  for step, stage in starts:
    ax.axvline(step, color="grey", lw=0.5, ls=":")
    ax.text(step, ax.get_ylim()[1], f" {stage}", fontsize=7, va="top", rotation=90)
  ax.set_xlabel("step")
  ax.set_ylabel("NLL per token (nats)")
  ax.set_title(os.path.basename(os.path.abspath(workdir)))
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out
