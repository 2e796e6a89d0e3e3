"""One model config per run: --init_from + --model runtime overrides, dry-run = train."""

import dataclasses
import glob
import json
import os

import jax
import pytest

from a3_jax.train import config as train_config, loop
from a3_jax.config import PRESETS, resolve
from a3_jax.errors import UserError

ROOT = os.path.join(os.path.dirname(__file__), "..")
PAPER = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "paper", "*.flags"))
               if not p.endswith("common.flags"))
SPM = os.path.join(ROOT, "a3_jax", "data", "assets", "shakespeare.model")


def test_a_checkpoint_fixes_the_architecture_but_not_the_runtime_settings():
  base = PRESETS["tiny"]
  got = resolve(base, [("remat", "full"), ("attention", "chunked"), ("dtype", "bfloat16"),
                       ("d_model", "64")], checkpoint="--init_from=x")
  assert (got.remat, got.attention, got.dtype, got.d_model) == ("full", "chunked", "bfloat16", 64)
  with pytest.raises(UserError, match="d_model.*num_layers|num_layers.*d_model"):
    resolve(base, [("num_layers", "3"), ("d_model", "32")], checkpoint="--init_from=x")
  assert resolve(base, [("d_model", "32")], vocab_size=99).replace(
      d_model=64, vocab_size=256) == base
  assert resolve(base, [("vocab_size", "300")], vocab_size=99).vocab_size == 300


@pytest.mark.slow
def test_init_from_with_runtime_overrides_trains_with_them(tmp_path, monkeypatch):
  from a3_jax import model
  from a3_jax.attention import chunked
  from a3_jax.export import save_export
  from a3_jax.model import init_params
  policies, chunked_calls = [], []
  config = PRESETS["tiny"].replace(vocab_size=8192)
  export_dir = save_export(str(tmp_path / "export"), init_params(config, jax.random.key(0)),
                           config, SPM)
  (tmp_path / "docs.txt").write_text("To be, or not to be, that is the question. " * 20)
  real_remat, real_chunked = model._remat, chunked.chunked_attention
  monkeypatch.setattr(model, "_remat", lambda cls, p: policies.append(p) or real_remat(cls, p))
  monkeypatch.setattr(chunked, "chunked_attention",
                      lambda *a, **k: chunked_calls.append(1) or real_chunked(*a, **k))
  job = train_config.Job(workdir=str(tmp_path / "run"), steps=1, batch_size=8, seq_len=16,
                    curriculum="ar:1", data=f"text:{tmp_path}/docs.txt", eval_batches=1,
                    init_from=export_dir, mesh="data:-1",
                    model_overrides=(("remat", "full"), ("attention", "chunked")))
  loop.run(job)
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert (saved["remat"], saved["attention"], saved["d_model"]) == ("full", "chunked", 64)
  # (reading the export builds its own config's abstract params first)
  assert "full" in policies and policies[-1] == "full"  # the compiled steps' layers
  assert chunked_calls  # the step's attention took the chunked path

  # a resume may change runtime settings and still refuses another architecture
  loop.run(dataclasses.replace(job, steps=2, model_overrides=(("remat", "dots"),)))
  with pytest.raises(UserError, match="num_layers"):
    loop.run(dataclasses.replace(job, steps=3, model_overrides=(("num_layers", "3"),)))


def _job_of(path, monkeypatch):
  from a3_jax.cli import common, dry_run
  monkeypatch.chdir(ROOT)  # the flag files name each other relative to the repo
  common.parse(dry_run.F, [f"--flagfile={path}"], "a3-dry-run", None)
  return train_config.job_from_flags(dry_run.F)


@pytest.mark.parametrize("path", PAPER, ids=os.path.basename)
def test_dry_run_reports_the_config_a3_train_builds(path, tmp_path, monkeypatch):
  from a3_jax import aot
  job = dataclasses.replace(_job_of(path, monkeypatch), workdir=str(tmp_path))
  stand_in, note = aot.init_config(job)
  assert note and stand_in == PRESETS[job.preset]  # the cluster path is not here
  planned = train_config.planned_config(job, stand_in)
  # a3-train's own path, with the checkpoint's config and no weights
  monkeypatch.setattr(train_config, "read_config", lambda spec: stand_in)
  monkeypatch.setattr(loop, "load_pretrained", lambda spec, mesh: (None, stand_in, None))
  built = loop.initial(job, None)[0]
  assert built == planned
  assert (built.dtype, built.remat) == ("bfloat16", "full")  # the flag files' --model lines
  assert built.vocab_size == stand_in.vocab_size


@pytest.mark.parametrize("path", PAPER, ids=os.path.basename)
def test_paper_flag_files_name_fineweb_and_slimpajama_shards(path, monkeypatch):
  from a3_jax.data.spec import parse
  job = _job_of(path, monkeypatch)
  (web, w_web), (pajama, w_pajama) = parse(job.data)
  assert (web.scheme, pajama.scheme, w_web, w_pajama) == ("parquet", "jsonl", 0.5, 0.5)
  assert "fineweb" in web.target and "slimpajama" in pajama.target
  assert [s.scheme for s, _ in parse(job.eval_data)] == ["jsonl"]


def test_dry_run_refuses_a_malformed_data_spec_without_reading_data(monkeypatch):
  from cli_helpers import run_main
  monkeypatch.chdir(ROOT)
  code, _, err = run_main("a3_jax.cli.dry_run", f"--flagfile={PAPER[0]}",
                          "--data=mix:parquet:/nowhere/*.parquet=1,jsonl:/nowhere/*.jsonl")
  assert code == 2 and "'jsonl:/nowhere/*.jsonl' is not SOURCE=WEIGHT" in err
