"""a3-dry-run --topology: the real train step compiled ahead of time for TPU and GPU
targets on this CPU host (the [tpu-aot] / [gpu-aot] extras; skipped without them)."""

import importlib.util
import json
import math

import pytest

from a3_jax import aot, targets
from a3_jax.config import PRESETS
from a3_jax.cli import dry_run
from sharding_golden import read_golden

pytestmark = pytest.mark.aot
needs_tpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                               reason="libtpu not installed: pip install -e '.[tpu-aot]'")
_no_cuda_plugin = pytest.mark.skipif(importlib.util.find_spec("jax_cuda12_plugin") is None,
                                     reason="CUDA plugin not installed: pip install -e '.[gpu-aot]'")


def needs_gpu(test):  # marked gpu_aot: the README's test commands run these apart
  return pytest.mark.gpu_aot(_no_cuda_plugin(test))


MESH = "data:2,fsdp:2,tensor:2"  # a mesh of the golden sharding table, on 8 chips
TINY = ["--preset=tiny", f"--mesh={MESH}", "--batch_size=8", "--seq_len=128", "--steps=10"]


def _plan(capsys, argv) -> dict:
  assert dry_run.main([*argv, "--json"]) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _refusal(capsys, argv) -> str:
  with pytest.raises(SystemExit) as exit_info:
    dry_run.main(argv)
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == ""  # no half-written report
  return captured.err.strip()


@needs_tpu
def test_step_compiles_for_a_tpu_slice_with_the_golden_partition_specs(capsys):
  """The `small` preset on 8 v5p chips: the compiled step's parameter shardings are the
  golden table's, attention is einsum (no Mosaic kernel), and the report adds up."""
  r = _plan(capsys, ["--topology=v5p:2x2x2", "--preset=small", f"--mesh={MESH}",
                     "--batch_size=8", "--seq_len=128", "--steps=10", "--curriculum=ar:10"])
  assert (r["devices"], r["platform"], r["device_kind"]) == (8, "tpu", "TPU v5")
  assert r["param_specs"] == read_golden()[f"small@{MESH}"]
  assert r["custom_calls"].get("tpu_custom_call", 0) == 0
  assert r["model_config"]["scan_layers"]  # the target's default, not the CPU host's
  assert r["hbm_bytes"] == targets.CHIPS["TPU v5"].hbm_bytes
  assert r["headroom_bytes"] == r["hbm_bytes"] - r["total_bytes"] > 0
  assert r["argument_bytes"] >= r["param_bytes_per_device"] + r["opt_state_bytes_per_device"]
  tokens = 8 * 128
  assert math.isclose(r["tokens_per_s_per_chip_at_mfu"] * r["model_flops_per_step"],
                      0.4 * 459e12 * tokens)


@needs_tpu
def test_kernel_attention_compiles_to_splash_on_a_multi_chip_tpu_slice(capsys):
  """Splash inside shard_map (rows over data x fsdp, heads over tensor) partitions; the
  HLO holds the Mosaic kernels (forward and backward)."""
  r = _plan(capsys, ["--topology=v5p:2x2x2", *TINY, "--model=attention=kernel",
                     "--curriculum=perm:4:10", "--model=attention_group_size=4"])
  assert r["custom_calls"].get("tpu_custom_call", 0) >= 2


@needs_gpu
def test_kernel_attention_compiles_for_eight_h100s(capsys):
  r = _plan(capsys, ["--topology=h100:8", *TINY, "--model=attention=kernel",
                     "--curriculum=ar:10"])
  assert (r["devices"], r["platform"]) == (8, "gpu")
  assert r["device_kind"] == "NVIDIA H100 80GB HBM3"
  assert r["hbm_bytes"] == 80 * 2**30 and r["total_bytes"] > r["param_bytes_per_device"]
  assert r["step_seconds_at_peak"] == pytest.approx(r["model_flops_per_step"] / (8 * 989e12))


@needs_tpu
def test_a_plan_that_does_not_fit_is_refused_in_one_line(capsys):
  """llama3.1-8b's parameters and Adam moments over 4 v5e chips (16 GiB each): 19.5 GiB
  per chip, refused before any compile."""
  err = _refusal(capsys, ["--topology=v5e:2x2", "--preset=llama3.1-8b", "--mesh=fsdp:4",
                          "--batch_size=4", "--seq_len=128", "--curriculum=ar:10"])
  assert len(err.splitlines()) == 1 and "does not fit" in err and "16.0 GiB" in err
  assert "fsdp" in err


def test_a_step_above_the_chips_hbm_is_refused():
  report = {"hbm_bytes": 16 * 2**30, "total_bytes": 20 * 2**30, "argument_bytes": 12 * 2**30,
            "temp_bytes": 8 * 2**30, "device_kind": "TPU v5 lite"}
  config = PRESETS["llama3.2-1b"]  # remat none, einsum attention
  with pytest.raises(aot.UserError, match=r"20.0 GiB per chip .* > 16.0 GiB .*remat=full.*"
                                          r"grad_accum.*chunked"):
    aot.check_fits(report, aot.knobs(config))
  aot.check_fits({**report, "total_bytes": 15 * 2**30}, aot.knobs(config))
  taken = aot.knobs(config.replace(remat="full", attention="chunked"))
  assert "remat" not in taken and "attention" not in taken and "grad_accum" in taken


def test_target_names_are_checked_before_any_plugin(capsys):
  err = _refusal(capsys, ["--topology=h100", "--preset=tiny"])
  assert "not a target name" in err and "h100:8" in err


def test_gpu_target_files_agree_with_the_chip_table():
  for model, kind in (("a100", "A100"), ("h100", "H100"), ("h200", "H200")):
    text = targets.gpu_target_config(model)
    memory = int(text.split("device_memory_size:")[1].split()[0])
    bandwidth = float(text.split("memory_bandwidth:")[1].split()[0])
    assert memory == targets.CHIPS[kind].hbm_bytes
    assert bandwidth == targets.CHIPS[kind].hbm_bytes_per_s


def test_decode_plan_holds_the_kv_cache_it_reads(capsys):
  """--what=decode on the suite's 8 CPU devices: the compiled decoder's temporaries hold
  at least the KV cache the roofline reads ([L, B, C, K, H] keys and values)."""
  r = _plan(capsys, ["--what=decode", "--preset=tiny", "--mesh=data:8", "--batch_size=8",
                     "--seq_len=64", "--group_size=4"])
  cache = 2 * 2 * 8 * 64 * 2 * 16 * 4 / 8  # layers, rows, slots, kv heads, head dim, f32
  assert r["cache_bytes_per_device"] == cache <= r["temp_bytes"]
  assert (r["steps"], r["prompt_len"], r["platform"]) == (8, 32, "cpu")
