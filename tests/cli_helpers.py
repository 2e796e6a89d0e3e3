"""Running a3_jax command-line modules in subprocesses, and a tiny export to feed them."""

import os
import subprocess
import sys

import jax
from flax.linen import meta

from a3_jax.config import get_preset
from a3_jax.tokenizer import load_tokenizer
from a3_jax.export import save_export
from a3_jax.model import init_params

CACHE_DIR = os.path.join(os.path.dirname(__file__), "..", ".jax_cache")


def subprocess_env() -> dict:
  """One device (fastest for tiny runs) and the tests' persistent compile cache."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)
  return env


def run_module(module: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=subprocess_env(), timeout=timeout)


def tiny_export(directory) -> str:
  """A tiny random model with the embedded tokenizer, saved as an export."""
  tokenizer = load_tokenizer()
  config = get_preset("tiny", vocab_size=tokenizer.vocab_size)
  params = meta.unbox(jax.jit(init_params, static_argnums=0)(config, jax.random.key(0)))
  return save_export(str(directory / "export"), params, config, tokenizer.path)
