"""What a checkpoint's training taught it: was its query stream (A3's head) ever trained?

An export of a training run keeps the run's flags (export.RUN_FLAGS: objective,
curriculum, steps, and the step it was exported at); a3-convert records that it
converted a checkpoint and whether that one carried a query vector. A raw 'hf:' or
'gguf:' checkpoint answers by its tensors. Where nothing says, the answer is unknown.
"""

from __future__ import annotations

from a3_jax import export
from a3_jax.convert.loader import has_query_vector, parse_spec
from a3_jax.grouping import parse_curriculum

CONVERTED = "converted_from"  # a3-convert's entry in an export's RUN_FLAGS


def causal_steps(curriculum: str) -> int:
  """Steps of the curriculum's leading causal stages (before A3 training starts)."""
  steps = 0
  for strategy, n in parse_curriculum(curriculum).stages:
    if strategy.kind != "causal":
      break
    steps += n
  return steps


def untrained_query_stream(spec: str) -> str | None:
  """Why the query stream of checkpoint `spec` was never trained, or None (trained or unknown)."""
  kind, path = parse_spec(spec)
  if kind != "export":
    return None if has_query_vector(spec) else f"{spec} is an AR LLaMA (no query-stream vector)"
  flags = export.run_flags(path) if export.is_export(path) else {}
  if CONVERTED in flags:
    return (None if flags.get("query_stream", False) else
            f"{path} was converted from {flags[CONVERTED]}, an AR LLaMA")
  if "curriculum" not in flags:
    return None
  objective = flags.get("train", {}).get("objective", "a3")
  if objective != "a3":
    return f"{path} was trained with --objective={objective}"
  step = int(flags.get("step", flags.get("steps", 0)))
  causal = causal_steps(flags["curriculum"])
  if step <= causal:
    return (f"{path} holds step {step}, inside its curriculum's causal stage "
            f"(A3 training starts after step {causal})")
  return None
