"""Whether a checkpoint's query stream was ever trained, from what its export recorded."""

import json

import pytest

from a3_jax.export import MARKER, RUN_FLAGS
from a3_jax.history import untrained_query_stream

CURRICULUM = "causal:360,ar:50,perm:4:240"


@pytest.mark.parametrize("flags,untrained", [
    (None, None),  # an export that recorded nothing: unknown
    ({"converted_from": "gguf:m.gguf", "query_stream": False}, "converted from gguf:m.gguf"),
    ({"converted_from": "hf:d", "query_stream": True}, None),
    ({"curriculum": CURRICULUM, "steps": 60, "train": {"objective": "a3"}}, "step 60, inside"),
    ({"curriculum": CURRICULUM, "steps": 700, "step": 300, "train": {"objective": "a3"}},
     "step 300, inside"),
    ({"curriculum": CURRICULUM, "steps": 700, "step": 361, "train": {"objective": "a3"}}, None),
    ({"curriculum": "ar:100", "steps": 100, "train": {"objective": "ar"}}, "--objective=ar"),
])
def test_untrained_query_stream(tmp_path, flags, untrained):
  (tmp_path / MARKER).touch()
  if flags is not None:
    (tmp_path / RUN_FLAGS).write_text(json.dumps(flags))
  reason = untrained_query_stream(str(tmp_path))
  assert reason == untrained if untrained is None else untrained in reason
