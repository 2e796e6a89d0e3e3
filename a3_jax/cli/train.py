"""`a3-train`: the training job (absl flags; defaults train on the embedded corpus).

  a3-train                                     # CPU default, ~10 minutes
  a3-train --flagfile=experiments/paper/llama3.2-1b_v5p.flags
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags

from a3_jax import distributed
from a3_jax.cli import common as cli
from a3_jax.train_step import TrainConfig
from a3_jax.trainer import Job, run
from a3_jax.errors import UserError

_D = Job()
_T = _D.train
F = flags.FlagValues()
F.append_flag_values(distributed.FLAGS)
flags.DEFINE_string("workdir", _D.workdir, "run directory: checkpoints, metrics.jsonl, tensorboard/",
                    flag_values=F)
flags.DEFINE_string("preset", _D.preset, "model preset (a3_jax.config.PRESETS)", flag_values=F)
flags.DEFINE_multi_string("model", [], "model config override NAME=VALUE (repeatable), e.g. --model=remat=full",
                          flag_values=F)
flags.DEFINE_integer("steps", _D.steps, "total training steps", flag_values=F)
flags.DEFINE_integer("batch_size", _D.batch_size, "global batch size (rows)", flag_values=F)
flags.DEFINE_integer("seq_len", _D.seq_len, "tokens per row", flag_values=F)
flags.DEFINE_float("lr", _T.lr, "peak learning rate", flag_values=F)
flags.DEFINE_integer("warmup_steps", _T.warmup_steps, "linear warmup steps", flag_values=F)
flags.DEFINE_enum("schedule", _T.schedule, ["cosine", "linear", "constant"], "decay after warmup",
                  flag_values=F)
flags.DEFINE_float("weight_decay", _T.weight_decay, "AdamW weight decay (matrices only)",
                   flag_values=F)
flags.DEFINE_float("clip_norm", _T.clip_norm, "global gradient-norm clip", flag_values=F)
flags.DEFINE_integer("grad_accum", _T.grad_accum, "micro-batches per step", flag_values=F)
flags.DEFINE_float("z_loss", _T.z_loss, "z-loss coefficient", flag_values=F)
flags.DEFINE_bool("count_first_group", _T.count_first_group,
                  "count tokens of each document's first group (predicted from nothing) in the loss",
                  flag_values=F)
flags.DEFINE_enum("objective", _T.objective, ["a3", "ar", "mdm"],
                  "a3: two-stream grouped loss; ar: causal baseline; mdm: masked-diffusion baseline",
                  flag_values=F)
flags.DEFINE_bool("mdm_shift", _T.mdm_shift,
                  "--objective=mdm: position i predicts token i+1 (DiffuLLaMA's shift, "
                  "for adapting a causal model)", flag_values=F)
flags.DEFINE_integer("mdm_anneal_steps", _T.mdm_anneal_steps,
                     "--objective=mdm: steps over which attention is annealed from causal "
                     "to full (0 = full from the start)", flag_values=F)
flags.DEFINE_string("curriculum", _D.curriculum,
                    "stages STRATEGY:STEPS, comma separated (ar, block:K, perm:K, mix:S=W,...:STEPS); "
                    "the last stage runs on past its steps", flag_values=F)
flags.DEFINE_string("data", _D.data, "shakespeare | text:GLOB | arrayrecord:GLOB | tfds:NAME[:SPLIT]",
                    flag_values=F)
flags.DEFINE_string("eval_data", None, "validation source (default: the validation split of --data)",
                    flag_values=F)
flags.DEFINE_string("data_dir", None, "tfds data directory (default: tfds' own)", flag_values=F)
flags.DEFINE_string("tokenizer", _D.tokenizer, "sentencepiece .model path (default: the embedded one)",
                    flag_values=F)
flags.DEFINE_string("mesh", _D.mesh, "mesh spec, e.g. data:2,fsdp:2,tensor:2 (-1 = the rest)",
                    flag_values=F)
flags.DEFINE_integer("seed", _D.seed, "seed of init, data order and groupings", flag_values=F)
flags.DEFINE_integer("eval_every", _D.eval_every, "steps between validation evals", flag_values=F)
flags.DEFINE_integer("eval_batches", _D.eval_batches, "validation batches per eval", flag_values=F)
flags.DEFINE_integer("save_every", _D.save_every, "steps between checkpoints", flag_values=F)
flags.DEFINE_integer("max_to_keep", _D.max_to_keep, "checkpoints kept", flag_values=F)
flags.DEFINE_string("init_from", None, "start from pretrained weights: hf:DIR | gguf:FILE | EXPORT_DIR",
                    flag_values=F)
flags.DEFINE_integer("worker_count", _D.worker_count, "grain worker processes for tokenization",
                     flag_values=F)
flags.DEFINE_bool("skip_nonfinite", _D.skip_nonfinite,
                  "skip a batch whose loss or gradient norm is not finite (counted in metrics as "
                  "skipped_nonfinite) instead of stopping the run", flag_values=F)


def job_from_flags(fv: flags.FlagValues = F) -> Job:
  """The Job of parsed a3-train flags (in `fv`: a3-train's own, or a tool's that holds them)."""
  overrides = []
  for item in fv.model:
    name, sep, value = item.partition("=")
    if not sep:
      raise UserError(f"--model={item!r}: expected NAME=VALUE")
    overrides.append((name.strip(), value.strip()))
  train = TrainConfig(lr=fv.lr, warmup_steps=fv.warmup_steps, total_steps=max(fv.steps, 1),
                      schedule=fv.schedule, weight_decay=fv.weight_decay, clip_norm=fv.clip_norm,
                      grad_accum=fv.grad_accum, z_loss=fv.z_loss,
                      count_first_group=fv.count_first_group, objective=fv.objective,
                      mdm_shift=fv.mdm_shift, mdm_anneal_steps=fv.mdm_anneal_steps)
  names = {f.name for f in dataclasses.fields(Job)} - {"train", "model_overrides"}
  return Job(train=train, model_overrides=tuple(overrides), **{n: getattr(fv, n) for n in names})


def main(argv: list[str] | None = None) -> int:
  with cli.user_errors("a3-train"):
    args = cli.parse(F, argv, "a3-train", __doc__)
    distributed.initialize_from_flags(F)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    run(job_from_flags())
  return 0


def entry():
  sys.exit(main())


if __name__ == "__main__":
  entry()
