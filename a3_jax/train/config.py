"""The run's configuration: one dataclass family (Job holds a TrainConfig), one set of
defaults, one place that validates, and a3-train's flags generated from the fields.

A field with `help` in its metadata is a flag (named `flag`, else the field's name);
`bound` in its metadata is checked when the dataclass is built, with a message that
names the flag. Checks that need the model config, the curriculum or the mesh are
`validate_plan` and `validate_mesh`, here too.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from absl import flags

from a3_jax import cpu_tuning
from a3_jax import sharding as shd
from a3_jax.checkpoint import CHANGEABLE
from a3_jax.config import PRESETS, ModelConfig, finite_in, get_preset, resolve
from a3_jax.convert.loader import read_config
from a3_jax.data.sft import OVERLONG, SCHEME as SFT_SCHEME
from a3_jax.errors import UserError
from a3_jax.grouping import check_group_sizes, parse_curriculum
from a3_jax.tokenizer import load_tokenizer

OBJECTIVES = ("a3", "ar", "mdm")
# The authors' five adaptation stages (experiments/paper) and learning rate: a3-train's
# defaults with --init_from (starting_defaults).
PAPER_STAGES = ("ar", "block:2", "block:4", "perm:4", "perm:8")
PAPER_LR = 2e-5
SCHEDULE_STEPS = "schedule_steps"  # flags.json: the steps the LR schedule was laid out for
SCHEDULES = ("cosine", "linear", "constant")
_BOUNDS = {">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, "> 0": lambda v: v > 0,
           "in [0, 1)": lambda v: 0 <= v < 1}


def _field(default, help=None, **metadata):
  """A config field; `help` makes it an a3-train flag (see the module docstring)."""
  return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _check_fields(config) -> None:
  for f in dataclasses.fields(config):
    bound, value = f.metadata.get("bound"), getattr(config, f.name)
    flag = f.metadata.get("flag", f.name)
    if "choices" in f.metadata and value not in f.metadata["choices"]:
      raise UserError(f"--{flag} must be one of {f.metadata['choices']}, got {value!r}")
    if bound is None:
      continue
    if isinstance(value, float) and not (math.isfinite(value) and _BOUNDS[bound](value)):
      raise UserError(f"--{flag} must be a finite number {bound}, got {value}")
    if isinstance(value, float) and not finite_in(value, "float32"):  # what optax computes in
      raise UserError(f"--{flag} must be a finite number {bound}, got {value} (infinite in "
                      "float32)")
    if isinstance(value, int) and not _BOUNDS[bound](value):
      raise UserError(f"--{flag} must be {bound}, got {value}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings. `objective='ar'` trains the causal baseline
  (content stream only, next-token loss) on the same backbone; 'mdm' the
  masked-diffusion baseline (a3_jax.mdm: bidirectional content stream, MDLM loss);
  mdm_shift and mdm_anneal_steps adapt a causal model to it the DiffuLLaMA way
  (position i predicts token i+1; attention annealed from causal to full)."""

  lr: float = _field(2e-3, "peak learning rate (a3-train's default: 2e-3 from scratch, the "
                     f"paper's {PAPER_LR} with --init_from)", bound="> 0")
  warmup_steps: int = _field(50, "linear warmup steps (a3-train's default: 50; with "
                             "--init_from min(50, steps/10))", bound=">= 0")
  total_steps: int = _field(700, flag="steps", bound=">= 1")  # a run's: Job.steps
  schedule: str = _field("cosine", "decay after warmup", choices=SCHEDULES)
  end_lr_ratio: float = _field(0.1, bound=">= 0")
  weight_decay: float = _field(0.1, "AdamW weight decay (matrices only)", bound=">= 0")
  b1: float = _field(0.9, bound="in [0, 1)")
  b2: float = _field(0.95, bound="in [0, 1)")
  clip_norm: float = _field(1.0, "global gradient-norm clip", bound="> 0")
  grad_accum: int = _field(1, "micro-batches per step", bound=">= 1")
  count_first_group: bool = _field(
      True, "count tokens of each document's first group (predicted from nothing) in the loss")
  z_loss: float = _field(0.0, "z-loss coefficient", bound=">= 0")
  objective: str = _field(
      "a3", "a3: two-stream grouped loss; ar: causal baseline; mdm: masked-diffusion baseline",
      choices=OBJECTIVES)
  mdm_shift: bool = _field(False, "--objective=mdm: position i predicts token i+1 "
                           "(DiffuLLaMA's shift, for adapting a causal model)")
  mdm_anneal_steps: int = _field(0, "--objective=mdm: steps over which attention is annealed "
                                 "from causal to full (0 = full from the start)", bound=">= 0")
  sft_given_rate: float = _field(
      0.0, "--data=sft:GLOB: each response token also joins the prompt in group 0 (given, "
      "not scored) with this probability: infilling-style conditioning", bound="in [0, 1)")

  def __post_init__(self):
    _check_fields(self)
    if self.objective != "mdm" and (self.mdm_shift or self.mdm_anneal_steps):
      raise UserError("--mdm_shift and --mdm_anneal_steps apply to objective 'mdm' only")


@dataclasses.dataclass(frozen=True)
class Job:
  """Everything one training run is told (the flags of a3-train)."""

  workdir: str = _field("runs/default", "run directory: checkpoints, metrics.jsonl, tensorboard/")
  preset: str = _field("small", f"model preset: {' | '.join(PRESETS)} (ignored with "
                       "--init_from, whose checkpoint fixes the architecture)")
  steps: int = _field(700, "total training steps", bound=">= 1")
  batch_size: int = _field(8, "global batch size (rows)", bound=">= 1")
  seq_len: int = _field(256, "tokens per row", bound=">= 1")
  # The 10-minute CPU default: a causal LM first (the AR model A3 adapts from, at about
  # half an A3 step's cost), then the A3 curriculum (experiments/cpu_default).
  curriculum: str = _field(
      "causal:360,ar:50,block:4:50,mix:ar=0.5,perm:4=0.5:240",
      "stages STRATEGY:STEPS, comma separated (ar, block:K, perm:K, mix:S=W,...:STEPS, "
      "causal:STEPS); the last stage runs on past its steps. a3-train's default follows the "
      "start: from scratch this one (a causal LM, then A3); with --init_from the paper's "
      "stages ar, block:2, block:4, perm:4, perm:8 in equal shares of --steps; with "
      "--objective=ar|mdm ar:STEPS")
  data: str = _field("shakespeare", "shakespeare | text:GLOB | arrayrecord:GLOB | tfds:NAME[:SPLIT]"
                     " | parquet:GLOB[#COLUMN] | jsonl:GLOB[#FIELD] | mix:SOURCE=W,SOURCE=W,..."
                     " | sft:GLOB (.jsonl prompt/response or chat examples: fine-tuning, the "
                     "prompt in group 0)")
  eval_data: str | None = _field(
      None, "validation source (default: the validation split of --data)")
  data_dir: str | None = _field(None, "tfds data directory (default: tfds' own)")
  sft_overlong: str = _field("refuse", "--data=sft:GLOB: an example longer than --seq_len is "
                             "refused (naming file and line) or truncated (its response's end)",
                             choices=OVERLONG)
  tokenizer: str | None = _field(
      None, "a sentencepiece .model or HF tokenizer.json (with tokenizer_config.json "
      "beside it naming bos/eos/pad) (default: the embedded one; with --init_from, "
      "the checkpoint's)")
  mesh: str = _field("data:-1", "mesh spec, e.g. data:2,fsdp:2,tensor:2 (-1 = the rest)")
  seed: int = _field(0, "seed of init, data order and groupings")
  eval_every: int = _field(100, "steps between validation evals", bound=">= 1")
  eval_batches: int = _field(8, "validation batches per eval", bound=">= 1")
  save_every: int = _field(100, "steps between checkpoints", bound=">= 1")
  max_to_keep: int = _field(3, "checkpoints kept", bound=">= 1")
  init_from: str | None = _field(
      None, "start from pretrained weights: hf:DIR | gguf:FILE | EXPORT_DIR")
  model_overrides: tuple[tuple[str, str], ...] = _field(
      (), "model config override NAME=VALUE (repeatable), e.g. --model=remat=full",
      flag="model")
  train: TrainConfig = TrainConfig()
  worker_count: int = _field(0, "grain worker processes for tokenization", bound=">= 0")
  allow_change: str = _field(
      "", "run settings a resume may change on purpose, comma separated: "
      f"{', '.join(CHANGEABLE)} (the data stream then starts afresh; never the tokenizer)")
  skip_nonfinite: bool = _field(
      False, "skip a batch whose loss or gradient norm is not finite (counted in metrics as "
      "skipped_nonfinite) instead of stopping the run")

  def __post_init__(self):
    _check_fields(self)
    unknown = sorted(set(self.allowed_changes) - set(CHANGEABLE))
    if unknown:
      raise UserError(f"--allow_change={self.allow_change}: {unknown[0]!r} is not one of "
                      f"{list(CHANGEABLE)}")

  @property
  def allowed_changes(self) -> tuple[str, ...]:
    return tuple(s.strip() for s in self.allow_change.split(",") if s.strip())

  @property
  def train_config(self) -> TrainConfig:
    """The optimisation settings of this run (its schedule ends at --steps)."""
    return dataclasses.replace(self.train, total_steps=self.steps)


def _flag_fields():
  """(dataclass, field) of every flag, Job's then TrainConfig's."""
  for cls in (Job, TrainConfig):
    for f in dataclasses.fields(cls):
      if f.metadata.get("help"):
        yield cls, f


def define_flags(fv: flags.FlagValues) -> None:
  """a3-train's flags in `fv`, one per field with help, defaulting to the field's default."""
  for _, f in _flag_fields():
    name, help_text = f.metadata.get("flag", f.name), f.metadata["help"]
    if f.name == "model_overrides":
      flags.DEFINE_multi_string(name, [], help_text, flag_values=fv)
    elif "choices" in f.metadata:
      flags.DEFINE_enum(name, f.default, list(f.metadata["choices"]), help_text, flag_values=fv)
    else:
      define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                float: flags.DEFINE_float}.get(type(f.default), flags.DEFINE_string)
      define(name, f.default, help_text, flag_values=fv)


def starting_defaults(init_from: str | None, objective: str, steps: int) -> dict[str, object]:
  """{field: value} of a3-train's defaults that follow where a run starts: from scratch
  the fields' own (a causal LM, then A3, at lr 2e-3); with --init_from (a pretrained
  AR model: no causal stage) the paper's stages in equal shares of `steps`, at its
  learning rate; objective 'ar' or 'mdm' (one objective throughout) a single stage."""
  if objective != "a3":
    return {"curriculum": f"ar:{steps}"}
  if not init_from:
    return {}
  n = len(PAPER_STAGES)
  shares = [steps // n + (i < steps % n) for i in range(n)]
  return {"curriculum": ",".join(f"{s}:{k}" for s, k in zip(PAPER_STAGES, shares) if k),
          "lr": PAPER_LR, "warmup_steps": min(50, steps // 10)}


def resumed_flags(workdir: str) -> dict:
  """The saved flags of the run a3-train would resume in `workdir` ({} if none)."""
  from a3_jax import checkpoint
  from a3_jax.export import run_flags
  try:
    resuming = checkpoint.has_checkpoint(workdir)
  except ImportError:  # gs:// without gcsfs (a3-dry-run): the run itself will say so
    return {}
  return run_flags(workdir) if resuming else {}


def schedule_steps(saved: dict) -> int | None:
  """The length its learning-rate schedule was laid out for, of a run's saved flags."""
  return saved.get(SCHEDULE_STEPS, saved.get("steps"))


def job_from_flags(fv: flags.FlagValues) -> Job:
  """The Job of parsed a3-train flags (in `fv`: a3-train's own, or a tool's that holds them).
  Flags not given take the run's own values when it resumes (its saved curriculum, lr and
  warmup), else `starting_defaults` where those apply, else the fields' defaults."""
  values = {Job: {}, TrainConfig: {}}
  for cls, f in _flag_fields():
    values[cls][f.name] = getattr(fv, f.metadata.get("flag", f.name))
  saved = resumed_flags(values[Job]["workdir"])
  defaults = ({"curriculum": saved["curriculum"], "lr": saved["train"]["lr"],
               "warmup_steps": saved["train"]["warmup_steps"]} if saved else
              starting_defaults(values[Job]["init_from"], values[TrainConfig]["objective"],
                                values[Job]["steps"]))
  for name, value in defaults.items():
    if not fv[name].present:
      values[Job if name == "curriculum" else TrainConfig][name] = value
  overrides = []
  for item in values[Job]["model_overrides"]:
    name, sep, value = item.partition("=")
    if not sep:
      raise UserError(f"--model={item!r}: expected NAME=VALUE")
    overrides.append((name.strip(), value.strip()))
  values[Job]["model_overrides"] = tuple(overrides)
  return Job(train=TrainConfig(**values[TrainConfig]), **values[Job])


def model_config_for(job: Job, vocab_size: int | None,
                     init_config: ModelConfig | None = None,
                     platform: str | None = None) -> ModelConfig:
  """THE model config of a run (a3-train and a3-dry-run both call this).

  From scratch: --preset with the tokenizer's `vocab_size` and the --model overrides.
  With --init_from: that checkpoint's config (`init_config`, read from --init_from
  when not given) with the --model overrides of runtime settings only. `platform`:
  of the devices the run is for (default: sharding.mesh_platform()), whose defaults
  (cpu_tuning.model_overrides) the --model flags override.
  """
  overrides = (cpu_tuning.model_overrides(platform or shd.mesh_platform())
               + tuple(job.model_overrides))
  if job.init_from:
    base = read_config(job.init_from) if init_config is None else init_config
    return resolve(base, overrides, checkpoint=f"--init_from={job.init_from}")
  return resolve(get_preset(job.preset), overrides, vocab_size=vocab_size)


def validate_plan(job: Job, model_config: ModelConfig, curriculum) -> None:
  """The checks of a job against its model config and curriculum (no devices needed:
  a3-dry-run runs them too)."""
  if job.seq_len > model_config.max_seq_len:
    raise UserError(f"--seq_len={job.seq_len} exceeds the model's max_seq_len "
                    f"({model_config.max_seq_len})")
  check_group_sizes(curriculum, job.seq_len)
  if curriculum.has_causal and job.train.objective != "a3":
    raise UserError(f"a 'causal' curriculum stage belongs to objective 'a3' (it trains the "
                    f"content stream before the A3 stages); objective "
                    f"{job.train.objective!r} has one objective throughout")
  sft = job.data.startswith(SFT_SCHEME)
  if job.train.sft_given_rate and not sft:
    raise UserError("--sft_given_rate applies to fine-tuning data (--data=sft:GLOB)")
  if job.train.objective == "mdm" and (sft or (job.eval_data or "").startswith(SFT_SCHEME)):
    raise UserError("--data=sft: trains objective 'a3' or 'ar' (the prompt in group 0, or "
                    "the response scored causally); 'mdm' has no prompt-conditioned loss")
  if model_config.attention == "kernel":
    k = model_config.attention_group_size
    for strategy, _ in curriculum.stages:
      if strategy.kind == "causal":
        continue
      if strategy.kind == "mix" or (strategy.kind != "ar" and strategy.k != k) or (
          strategy.kind == "ar" and k != 1):
        raise UserError(f"attention=kernel assumes groups of attention_group_size={k}; "
                        f"stage {strategy.name!r} differs (use attention=chunked)")


def planned_config(job: Job, init_config: ModelConfig | None = None,
                   platform: str | None = None) -> ModelConfig:
  """The model config `loop.run(job)` trains on `platform`'s devices, checked against
  the curriculum, without devices or weights (a3-dry-run). `init_config` stands in for
  --init_from's config."""
  vocab_size = None if job.init_from else load_tokenizer(job.tokenizer).vocab_size
  model_config = model_config_for(job, vocab_size, init_config, platform)
  validate_plan(job, model_config, parse_curriculum(job.curriculum))
  return model_config


def validate_mesh(job: Job, mesh) -> None:
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if rows % jax.process_count():  # each process loads the rows of its own devices
    raise UserError(f"--mesh={job.mesh}: data*fsdp ({rows}) must be a multiple of the "
                    f"number of processes ({jax.process_count()})")
  check_batch_rows(job, rows)


def check_batch_rows(job: Job, rows: int) -> None:
  """The global batch splits evenly over `rows` = data*fsdp devices and grad_accum."""
  if job.batch_size % (rows * job.train.grad_accum):
    raise UserError(f"--batch_size={job.batch_size} must be divisible by data*fsdp "
                    f"({rows}) * grad_accum ({job.train.grad_accum})")
