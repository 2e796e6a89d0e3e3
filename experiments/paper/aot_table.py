"""The AOT table of experiments/paper/README.md from `a3-dry-run --topology --json` outputs.

  a3-dry-run --flagfile=experiments/paper/llama3.2-1b_v5p.flags --topology=v5p:2x4x4 \
      --json > aot/llama3.2-1b_v5p.json        # one per flag file: see the README
  python experiments/paper/aot_table.py aot/*.json
"""

from __future__ import annotations

import json
import os
import sys

GIB = 2 ** 30


def row(path: str) -> str:
  with open(path) as f:
    r = json.loads(f.read().strip().splitlines()[-1])
  name = os.path.basename(path).removesuffix(".json")
  mesh = ",".join(f"{k}:{v}" for k, v in r["mesh"].items() if v > 1)
  cfg = r["model_config"]
  return (f"| {name} | {r['devices']} x {r['device_kind']} | {mesh}, accum "
          f"{r['grad_accum']} | {cfg['attention']}, remat {cfg['remat']} | {r['argument_bytes'] / GIB:.1f} + {r['temp_bytes'] / GIB:.1f}"
          f" = {r['total_bytes'] / GIB:.1f} | {r['hbm_bytes'] / GIB:.0f} | "
          f"{r['headroom_bytes'] / GIB:.1f} | {r['step_seconds_at_peak']:.2f} | "
          f"{r['tokens_per_s_per_chip_at_mfu']:,.0f} | {r['run_seconds_at_mfu'] / 3600:.1f} |")


def main(paths: list[str]) -> None:
  print("| flag file | target | mesh, accumulation | attention, remat | per-chip GiB: args + temp = total "
        "| HBM GiB | headroom GiB | step s at peak | tokens/s/chip at 40 % | run h at 40 % |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for path in paths:
    print(row(path))


if __name__ == "__main__":
  main(sys.argv[1:])
