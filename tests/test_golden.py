"""Our model against the authors' implementation (golden vectors in ../shared/golden)."""

import json
import os

import numpy as np
import pytest

from a3_jax.convert.hf_params import config_from_hf, params_from_hf
from a3_jax.model import A3LM

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "golden")
FILES = ("two_stream_tiny.npz", "two_stream_tiny_llama3rope_tied.npz")


def _load(name):
  path = os.path.join(GOLDEN_DIR, name)
  if not os.path.exists(path):
    pytest.skip(f"golden file {path} not present")
  z = np.load(path)
  config = config_from_hf(json.loads(str(z["config_json"])))
  state = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
  return z, A3LM(config), params_from_hf(state, config)


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("case", ["ar", "block2", "perm4", "arbitrary"])
def test_query_and_content_logits_match_golden(name, case):
  z, model, params = _load(name)
  out = model.apply(params, z["input_ids"], z[f"{case}/group_ids"])
  np.testing.assert_allclose(out["query"], z[f"{case}/query_logits"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["content"], z[f"{case}/content_logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FILES)
def test_padded_positions_match_golden(name):
  z, model, params = _load(name)
  mask = z["padded/attention_mask"]
  out = model.apply(params, z["input_ids"], z["padded/group_ids"], mask)
  keep = mask.astype(bool)
  np.testing.assert_allclose(out["query"][keep], z["padded/query_logits"][keep], atol=1e-4, rtol=0)
