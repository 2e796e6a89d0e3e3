"""The validation table of a run, as markdown rows (experiments/cpu_default/README.md).

  python experiments/cpu_default/table.py runs/default
"""

from __future__ import annotations

import sys

from a3_jax.metrics import read_metrics


def main(workdir: str) -> None:
  records = read_metrics(workdir)
  stage = {r["step"]: r["stage"] for r in records if "split" not in r}
  causal = any("nll_causal" in r for r in records)  # a curriculum with a causal stage
  print("| step | stage | NLL/token `ar` | NLL/char `ar` | NLL/token `perm:4` | NLL/char `perm:4` |"
        + (" causal LM NLL/token |" if causal else ""))
  print("|---|---|---|---|---|---|" + ("---|" if causal else ""))
  for r in records:
    if r.get("split") == "validation":
      print(f"| {r['step']} | {stage.get(r['step'], '')} | {r['nll_ar']:.3f} | "
            f"{r['nll_ar_per_char']:.3f} | {r['nll_perm4']:.3f} | {r['nll_perm4_per_char']:.3f} |"
            + (f" {r['nll_causal']:.3f} |" if causal else ""))
  steps = [r for r in records if "split" not in r]
  if steps:
    rates = sorted(r["tokens_per_s"] for r in steps[1:])
    print(f"\nsteps {len(steps)}, elapsed {steps[-1]['elapsed_s']:.0f} s, median tokens/s "
          f"{rates[len(rates) // 2]:.0f}" if rates else "")


if __name__ == "__main__":
  main(sys.argv[1])
