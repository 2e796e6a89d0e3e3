"""The experiment's settings, chosen here explicitly (never a3-train's defaults).

`full`: sized so the whole experiment fits about two hours on a quiet 2-core CPU
(see README.md for the arithmetic); `quick`: a smaller model and a fifth of the
tokens (indicative numbers on a busy machine); `smoke`: everything end to end in a
few minutes, to check the harness. Smoke numbers are not results.
"""

from __future__ import annotations

import dataclasses

from a3_jax.grouping import equal_curriculum as curriculum  # noqa: F401 (run.py, probe.py)


@dataclasses.dataclass(frozen=True)
class Budget:
  # The backbone (every field set: another helper may retune the presets).
  model: tuple[tuple[str, str], ...]
  batch_size: int
  seq_len: int
  base_steps: int
  base_lr: float
  adapt_steps: int  # equal for every adaptation: equal tokens
  adapt_lr: float
  mdm_anneal_fraction: float  # of the adaptation steps
  # Evaluation sizes (the same items for every model).
  eval_tokens_per_play: int
  elbo_samples: int
  perm_orders: int
  passages_per_play: int
  mc_items_per_play: int
  mc_elbo_samples: int
  gen_prompts: int
  gen_prompt_tokens: int
  gen_new_tokens: int
  gen_calls: int


def _model(d, layers, heads, kv, head_dim, mlp) -> tuple[tuple[str, str], ...]:
  return (("d_model", str(d)), ("num_layers", str(layers)), ("num_heads", str(heads)),
          ("num_kv_heads", str(kv)), ("head_dim", str(head_dim)), ("mlp_dim", str(mlp)),
          ("max_seq_len", "1024"), ("tie_embeddings", "true"), ("rope_theta", "10000.0"),
          ("query_init_scale", "0.02"), ("init_std", "0.02"), ("dtype", "float32"),
          ("attention", "einsum"), ("remat", "none"))


BUDGETS = {
    # ~10.6M parameters (8k vocabulary, tied): the `small` shape of this project.
    "full": Budget(model=_model(256, 6, 8, 4, 32, 768), batch_size=16, seq_len=128,
                   base_steps=800, base_lr=1e-3, adapt_steps=320, adapt_lr=3e-4,
                   mdm_anneal_fraction=0.25, eval_tokens_per_play=4096, elbo_samples=16,
                   perm_orders=4, passages_per_play=60, mc_items_per_play=100,
                   mc_elbo_samples=8, gen_prompts=48, gen_prompt_tokens=32,
                   gen_new_tokens=32, gen_calls=16),
    # Indicative only: a 1.8M-parameter shape and an eighth of the tokens, for a machine
    # that cannot give the full run its two hours.
    "quick": Budget(model=_model(128, 4, 4, 2, 32, 384), batch_size=8, seq_len=128,
                    base_steps=400, base_lr=2e-3, adapt_steps=100, adapt_lr=5e-4,
                    mdm_anneal_fraction=0.25, eval_tokens_per_play=2048, elbo_samples=8,
                    perm_orders=4, passages_per_play=24, mc_items_per_play=40,
                    mc_elbo_samples=8, gen_prompts=16, gen_prompt_tokens=32,
                    gen_new_tokens=32, gen_calls=16),
    "smoke": Budget(model=_model(64, 2, 4, 2, 16, 128), batch_size=8, seq_len=64,
                    base_steps=30, base_lr=3e-3, adapt_steps=20, adapt_lr=1e-3,
                    mdm_anneal_fraction=0.25, eval_tokens_per_play=192, elbo_samples=2,
                    perm_orders=2, passages_per_play=4, mc_items_per_play=4,
                    mc_elbo_samples=2, gen_prompts=4, gen_prompt_tokens=16,
                    gen_new_tokens=8, gen_calls=4),
}

# The paper's curriculum (AR -> contiguous 2 -> 4 -> permuted 4 -> permuted 8), equal
# stages scaled to the budget; the ablation keeps only the permuted stages.
A3_STAGES = ("ar", "block:2", "block:4", "perm:4", "perm:8")
A3_DIRECT_STAGES = ("perm:4", "perm:8")
