"""An export read straight into shardings (what --init_from=EXPORT_DIR does)."""

import jax
import numpy as np
from flax.linen import meta

from a3_jax.config import get_preset
from a3_jax.convert.loader import default_shardings
from a3_jax.export import load_export, save_export
from a3_jax.model import init_params


def test_export_loads_into_shardings(tmp_path):
  config = get_preset("tiny")
  params = meta.unbox(init_params(config, jax.random.key(0)))
  save_export(str(tmp_path / "e"), params, config, None)
  loaded, _, _ = load_export(str(tmp_path / "e"), default_shardings(config))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_loads_cast_to_another_param_dtype(tmp_path):
  from a3_jax.convert.loader import load_pretrained
  config = get_preset("tiny")
  params = meta.unbox(init_params(config, jax.random.key(0)))
  save_export(str(tmp_path / "e"), params, config, None)
  loaded, loaded_config, _ = load_pretrained(str(tmp_path / "e"), param_dtype="bfloat16")
  assert loaded_config.param_dtype == "bfloat16"
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    assert b.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(a.astype(b.dtype)), np.asarray(b))
