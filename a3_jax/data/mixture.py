"""The realised shares of a data mixture: tokens per source, counted as batches leave.

Each packed row of a mixture carries the index of its source (SOURCE_FEATURE);
`MixtureIterator` drops it from every batch, after adding the row's tokens to
its source's count. The counts are part of the iterator state, so a resumed run
reports the shares of the whole run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from a3_jax.data.json_state import JsonStateIterator
from a3_jax.data.spec import Source
from a3_jax.errors import UserError

SOURCE_FEATURE = "source"


def tagged(source_index: int, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A packed row with the index of the source it came from."""
  return {**row, SOURCE_FEATURE: np.int32(source_index)}


class MixtureIterator(JsonStateIterator):
  """Batches of a mixture without their source feature; counts tokens per source."""

  def __init__(self, parent, mixture: tuple[tuple[Source, float], ...]):
    super().__init__(parent)
    self._specs = [source.spec for source, _ in mixture]
    self._weights = [weight for _, weight in mixture]
    self._tokens = np.zeros(len(mixture), np.int64)

  def __next__(self):
    batch = dict(next(self._parent))
    source_B = batch.pop(SOURCE_FEATURE)
    np.add.at(self._tokens, source_B, np.count_nonzero(batch["segment_ids"], axis=1))
    return batch

  def realised_shares(self) -> dict[str, dict[str, float]]:
    """{source spec: {'weight', 'share' (of the tokens read so far), 'tokens'}}."""
    total = max(int(self._tokens.sum()), 1)
    return {spec: {"weight": weight, "share": int(tokens) / total, "tokens": int(tokens)}
            for spec, weight, tokens in zip(self._specs, self._weights, self._tokens)}

  def get_state(self) -> dict[str, Any]:
    return {"mixture": self._mixture(), "tokens_per_source": self._tokens.tolist(),
            "pipeline": super().get_state()}

  def _mixture(self) -> list[list]:
    return [[spec, weight] for spec, weight in zip(self._specs, self._weights)]

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("mixture") != self._mixture():
      raise UserError(f"the checkpoint's data iterator reads the mixture {state.get('mixture')}, "
                       f"this run's --data {self._mixture()}: resume with the same --data")
    self._tokens = np.asarray(state["tokens_per_source"], np.int64)
    super().set_state(state["pipeline"])
