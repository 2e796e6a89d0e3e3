"""Every preset and every experiment flag file builds (abstractly) on a fake mesh."""

import glob
import json
import os
import subprocess
import sys

import jax
import pytest

from a3_jax import sharding as shd
from a3_jax.config import PRESETS, ModelConfig
from a3_jax.train.config import TrainConfig
from a3_jax.train.state import state_shardings

ROOT = os.path.join(os.path.dirname(__file__), "..")
FLAG_FILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "**", "*.flags"), recursive=True))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_abstractly_on_8_devices_and_round_trips_json(name):
  config = PRESETS[name]
  assert ModelConfig.from_json(config.to_json()) == config
  mesh = shd.make_mesh("fsdp:4,tensor:2")
  shardings = state_shardings(config, TrainConfig(), mesh)
  assert len(jax.tree.leaves(shardings.params)) == 13 - int(config.tie_embeddings)


@pytest.mark.slow
def test_flag_file_dry_run_reports_bytes_per_device():
  # One subprocess (a3-dry-run needs its own device count); every flag file's config is
  # compared with a3-train's in-process in test_run_config.py.
  path = os.path.join(ROOT, "experiments", "paper", "llama3.2-1b_v5p.flags")
  proc = subprocess.run([sys.executable, "-m", "a3_jax.cli.dry_run", f"--flagfile={path}", "--json"],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["param_bytes_per_device"] > 0 and result["opt_state_bytes_per_device"] > 0
  assert result["devices"] == result["mesh"]["data"] * result["mesh"]["fsdp"] * result["mesh"]["tensor"] == 32
  assert (result["model_config"]["remat"], result["model_config"]["dtype"]) == ("full", "bfloat16")
  assert "stands in" in result["init_from_note"] and "stands in" in proc.stderr


def test_paper_flag_files_exist_for_each_base_model_and_mesh():
  names = {os.path.basename(p) for p in FLAG_FILES}
  for model in ("llama3.2-1b", "llama3.2-3b", "llama3.1-8b"):
    assert {f"{model}_v5p.flags", f"{model}_8xh100.flags"} <= names
