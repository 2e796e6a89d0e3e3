"""a3-export reads only the params of a checkpoint: its peak memory is about the export's
size, not the whole train state's (measured in a fresh process)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import export_memory  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.slow
def test_export_peak_memory_is_about_the_params_not_the_optimizer_state(tmp_path):
  sizes = export_memory.write_checkpoint(str(tmp_path), d_model=512, num_layers=6)
  state_mib = sizes["state_bytes"] / export_memory.MIB  # ~330 MiB: fp32 params + 2 moments
  export_mib = sizes["params_bytes"] / export_memory.MIB / 2  # ~55 MiB in bfloat16
  growth = export_memory.peak_growth(str(tmp_path), "bfloat16")
  # Reading the whole state grows the peak by ~450 MiB (benchmarks/export_memory.py);
  # params only by ~105-165 MiB (the bf16 params, fp32 read buffers, orbax's copy on save).
  assert growth < 0.6 * state_mib, (growth, state_mib, export_mib)
