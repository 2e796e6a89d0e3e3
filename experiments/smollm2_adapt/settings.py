"""The experiment's settings, chosen here explicitly (never a3-train's defaults).

`full`: sized so that the whole experiment fits about four hours of a quiet 2-core CPU
(README.md, "Sizing"); `smoke`: every stage end to end on a few steps and stories, to
check the harness (its numbers are not results).
"""

from __future__ import annotations

import dataclasses

from a3_jax.grouping import equal_curriculum as curriculum  # noqa: F401 (run.py, probe.py)


@dataclasses.dataclass(frozen=True)
class Budget:
  steps: int  # of each adaptation (A3 and MDM: equal tokens)
  batch_size: int
  seq_len: int
  lr: float
  warmup_steps: int
  mdm_anneal_fraction: float  # of the MDM steps: attention annealed causal -> full
  eval_batches: int  # a3-train's validation batches at the end of each stage
  stories: int  # ROCStories evaluated (the paper: the first 1,000)
  eval_batch_size: int  # stories per decoding batch
  likelihood_chars: int  # characters of each held-out document scored
  perm_orders: int  # random orders averaged for perm:4


BUDGETS = {
    # 375 steps x 8 x 128 = 384,000 tokens per adaptation (A3: 75 steps per stage).
    "full": Budget(steps=375, batch_size=8, seq_len=128, lr=1e-4, warmup_steps=20,
                   mdm_anneal_fraction=0.25, eval_batches=2, stories=1000,
                   eval_batch_size=16, likelihood_chars=6000, perm_orders=2),
    "smoke": Budget(steps=5, batch_size=2, seq_len=64, lr=1e-4, warmup_steps=1,
                    mdm_anneal_fraction=0.4, eval_batches=1, stories=4, eval_batch_size=4,
                    likelihood_chars=300, perm_orders=1),
}

# The paper's curriculum (AR -> contiguous 2 -> 4 -> permuted 4 -> permuted 8), equal
# stages scaled to the budget.
A3_STAGES = ("ar", "block:2", "block:4", "perm:4", "perm:8")

# (decoding method, tokens per model call) of each model on ROCStories; all greedy.
DECODERS = {
    "base": (("ar", 1),),  # the content head, prefix only (it cannot see the suffix)
    "a3": (("a3", 1), ("a3", 2), ("a3-dynamic", 1), ("a3-dynamic", 2)),
    "mdm": (("mdm", 1), ("mdm", 2)),
}
HEADS = {"base": "content", "a3": "query", "mdm": "mdm"}
LIKELIHOOD_GROUPINGS = {"base": ("ar",), "a3": ("ar", "block:4", "perm:4")}

# Published ROUGE-1/2/L on the same protocol (issue 24).
PUBLISHED = (
    ("GPT2-S (124M), prefix only", (7.8, 0.8, 7.4), "DiffuLLaMA paper, Table 1"),
    ("SEDD-S", (11.9, 0.7, 10.9), "DiffuLLaMA paper, Table 1"),
    ("DiffuGPT-S (127M, ~30B+ adaptation tokens)", (13.7, 1.4, 12.6),
     "DiffuLLaMA paper, Table 1"),
    ("A3-1B", (11.8, 1.7, 11.1), "A3 paper"),
    ("A3-8B", (19.2, 4.6, 18.6), "A3 paper"),
)
