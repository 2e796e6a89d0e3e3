"""Our model against the authors' implementation (golden vectors in tests/golden, see its README)."""

import functools
import json
import os

import chex
import jax
import numpy as np
import pytest

from a3_jax.convert.hf_params import config_from_hf, params_from_hf
from a3_jax.model import A3LM

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
FILES = ("two_stream_tiny.npz", "two_stream_tiny_llama3rope_tied.npz")


@functools.cache
def _load(name):
  """(arrays, apply, params): one jitted forward per file, shared by its cases."""
  z = dict(np.load(os.path.join(GOLDEN_DIR, name)))  # shipped with the tests: never a skip
  config = config_from_hf(json.loads(str(z["config_json"])))
  state = {k[len("param/"):]: v for k, v in z.items() if k.startswith("param/")}
  return z, jax.jit(A3LM(config).apply), params_from_hf(state, config)


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("case", ["ar", "block2", "perm4", "arbitrary"])
def test_query_and_content_logits_match_golden(name, case):
  z, apply, params = _load(name)
  out = apply(params, z["input_ids"], z[f"{case}/group_ids"])
  chex.assert_trees_all_close(
      {"query": out["query"], "content": out["content"]},
      {"query": z[f"{case}/query_logits"], "content": z[f"{case}/content_logits"]},
      atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FILES)
def test_padded_positions_match_golden(name):
  z, apply, params = _load(name)
  mask = z["padded/attention_mask"]
  out = apply(params, z["input_ids"], z["padded/group_ids"], mask)
  keep = mask.astype(bool)
  np.testing.assert_allclose(out["query"][keep], z["padded/query_logits"][keep], atol=1e-4, rtol=0)
