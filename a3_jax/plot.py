"""Training curves of a run: loss per step and validation NLL, stage starts marked.

Per-token values (training loss, validation `nll_*`) and per-character ones
(`nll_*_per_char`) are different units: they get separate axes, one above the
other, sharing the step axis. Stage names sit above the top axis, clear of the
curves and the legend.
"""

from __future__ import annotations

import math
import os
import sys

from a3_jax.errors import UserError
from a3_jax.metrics import read_metrics

DEFAULT_NAME = "curves.png"


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def out_path(workdir: str, out: str | None, formats) -> str:
  """Where the figure goes: `out` (a file of a known image type, or an existing directory,
  which gets curves.png), default WORKDIR/curves.png."""
  if out is None:
    return os.path.join(workdir, DEFAULT_NAME)
  if os.path.isdir(out):
    out = os.path.join(out, DEFAULT_NAME)
  ext = os.path.splitext(out)[1].lstrip(".").lower()
  if ext not in formats:
    raise UserError(f"--out={out}: unknown image type {('.' + ext) if ext else '(none)'}; "
                    f"use one of {', '.join('.' + f for f in sorted(formats))}")
  out_dir = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
    raise UserError(f"--out={out}: {out_dir} is not a writable directory")
  return out


def _series(records: list[dict], key: str, what: str, warn) -> list[tuple[int, float]]:
  """(step, value) of the records holding `key`; non-numeric values skipped and said."""
  points, bad = [], []
  for r in records:
    if key in r:
      (points.append((r["step"], float(r[key]))) if _number(r[key]) else bad.append(r["step"]))
  if bad:
    warn(f"skipped {len(bad)} {what} record(s) whose {key!r} is not a finite number "
         f"(steps {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})")
  return points


def plot_run(workdir: str, out: str | None = None) -> str:
  """Draws WORKDIR/metrics.jsonl to `out` (default WORKDIR/curves.png; a directory gets
  curves.png inside it); returns its path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not os.path.isdir(workdir):
    raise UserError(f"WORKDIR {workdir} is not a directory")
  fig = plt.figure(figsize=(8, 6))
  try:
    out = out_path(workdir, out, fig.canvas.get_supported_filetypes())
    warn = lambda m: print(f"warning: {m}", file=sys.stderr)  # noqa: E731
    records = read_metrics(workdir, report=warn)
    train = [r for r in records if r.get("split", "train") == "train" and "loss" in r]
    valid = [r for r in records if r.get("split") == "validation"]
    loss = _series(train, "loss", "training", warn)
    if not loss:
      raise UserError(f"{workdir} has no training metrics (metrics.jsonl missing, empty or "
                      "without a numeric loss)")
    names = sorted({k for r in valid for k in r if k.startswith("nll_")})
    per_char = [n for n in names if n.endswith("_per_char")]
    per_token = [n for n in names if n not in per_char]
    groupings = sorted({n[4:].removesuffix("_per_char") for n in names})
    color = {g: f"C{i + 1}" for i, g in enumerate(groupings)}  # C0: the training loss
    axes = fig.subplots(2 if per_char else 1, 1, sharex=True, squeeze=False)[:, 0]
    tok_ax = axes[0]
    tok_ax.plot(*zip(*loss), lw=0.8, alpha=0.7, label="train loss (current stage)")
    for name in per_token:
      points = _series(valid, name, "validation", warn)
      if points:
        tok_ax.plot(*zip(*points), marker="o", color=color[name[4:]],
                    label=f"validation {name[4:]}")
    tok_ax.set_ylabel("nats per token")
    for name in per_char:
      points = _series(valid, name, "validation", warn)
      if points:
        grouping = name[4:].removesuffix("_per_char")
        axes[1].plot(*zip(*points), marker="o", color=color[grouping],
                     label=f"validation {grouping}")
    if per_char:
      axes[1].set_ylabel("nats per character")
    starts = [(r["step"], r["stage"]) for i, r in enumerate(train)
              if "stage" in r and (i == 0 or train[i - 1].get("stage") != r["stage"])]
    for step, stage in starts:
      for ax in axes:
        ax.axvline(step, color="grey", lw=0.5, ls=":")
      tok_ax.text(step, 1.01, f"{stage}", fontsize=7, rotation=30, ha="left", va="bottom",
                  transform=tok_ax.get_xaxis_transform())
    for ax in axes:
      ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("step")
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
  finally:
    plt.close(fig)
  return out
