"""Grain iterator states that survive JSON, the format orbax saves them in.

`grain.checkpoint.CheckpointSave(iterator)` writes `iterator.get_state()` as
JSON, which turns tuples into lists. grain 0.2.18's ConcatThenSplit packer
tells "no half-packed document" by comparing its `remainder_slices` with the
tuple (-1, -1), so after a JSON round trip that test fails and the restored
stream differs from the saved one. `JsonStateIterator` turns those slices back
into tuples before handing a state to grain.
"""

from __future__ import annotations

from typing import Any

import grain


def _with_tuple_slices(state: Any) -> Any:
  """`state` with every `remainder_slices` value a tuple again (nested states included)."""
  if isinstance(state, dict):
    return {key: ({feature: tuple(sl) for feature, sl in value.items()} if key == "remainder_slices"
                  else _with_tuple_slices(value))
            for key, value in state.items()}
  if isinstance(state, list):
    return [_with_tuple_slices(item) for item in state]
  return state


class JsonStateIterator(grain.DatasetIterator):
  """Yields what `parent` yields; `set_state` also accepts a state read back from JSON."""

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(_with_tuple_slices(state))
