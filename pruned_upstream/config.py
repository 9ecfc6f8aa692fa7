"""Training configuration: typed defaults in dataclasses, their allowed values, and the checks.

The dataclasses below hold every default (the paper's recipe for WavLM Base;
the sources of the values are in `configs/wavlm_base_sp80.yaml`). Reading YAML
files and `key=value` overrides into them is config_files.py. No torch here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .gating import PruneConfig

# The optimizer's parameter groups (training/sparsity.py make_optimizers): weights and log_alpha
# by descent, the Lagrange multipliers by ascent.
OPTIMIZER_GROUPS = ("weights", "log_alpha", "lambdas")
# Keys a resumed run may change (docs/training.md, "Resume"): how often it saves and logs, how many
# checkpoints it keeps, data loader workers, CPU threads, the progress bar and TensorBoard do not
# touch what is computed; train.steps moves the end of the lr's linear decay, and run.py allows it
# only once both warm-ups are behind the checkpoint (training/run.py _check_steps_change).
RESUMABLE_CHANGES = ("train.steps", "train.save_every", "train.log_every", "run.keep_checkpoints",
                     "data.num_workers", "run.threads", "run.progress", "run.tensorboard")


@dataclass
class TeacherConfig:
    checkpoint: str | None = None  # original .pt, Hugging Face dir or our .safetensors; None: random weights
    preset: str = "tiny"  # random teacher: tiny | base | base_plus | large | hubert_base | ... (CHOICES)
    arch: dict = field(default_factory=dict)  # overrides of the preset, e.g. {num_layers: 4, embed_dim: 64}
    seed: int = 0  # torch seed of the random teacher's initialisation


@dataclass
class StudentConfig:
    checkpoint: str | None = None  # None: a copy of the teacher (the paper); a model file: start from it
    drop_layers: str | None = None  # layers removed before the gates: "3,7" | "top:K" | "uniform:K" (docs/layers.md)


@dataclass
class PruneOptions(PruneConfig):
    """gating.PruneConfig (kinds, ste, init_keep) and whether to prune at all."""

    enabled: bool = True  # False: no gates and no Lagrangian (the final distillation stage)
    # The size to reach, as DPHuBERT states it: parameters of the whole exported model (CNN, projection,
    # positional convolution, everything), counted as DPHuBERT counts them (model/prunable.py
    # whole_model_params). Set, it replaces train.target_sparsity (give one of the two): the Lagrangian's
    # target becomes the fraction of the prunable parameters that leaves this many (docs/training.md).
    target_params: int | None = None


@dataclass
class DistillConfig:
    teacher_layers: list[int] | None = None  # None: every `every`-th layer and the last (3, 6, 9, 12 of 12)
    every: int = 3
    pairing: str = "learned"  # learned (CoFi) | fixed
    student_layers: list[int] | None = None  # fixed pairing; None: the teacher's layer numbers
    loss: str = "mse"  # mse (paper Eq. 5) | l1_cos (DistilHuBERT)
    cos_weight: float = 1.0  # l1_cos only
    weight: float = 1.0  # scale of the whole distillation term (CoFi's distill_loss_alpha); Eq. 5 has none
    projection: str = "shared"  # shared (CoFi) | per_layer (DPHuBERT) | none
    layer_drop: float = 0.0  # stochastic depth of the student ([Lee2021], docs/references.md); 0: off, as the paper
    layer_drop_schedule: str = "constant"  # constant | linear (rising with depth, Huang et al. 2016)
    layer_reduce: str = "sum"  # the pairs' losses: sum (paper Eq. 5, CoFi) | mean (DPHuBERT lightning.py DistillLoss)


@dataclass
class TrainConfig:
    steps: int = 200_000
    batch_size: int | None = 24  # utterances per process and micro-batch
    max_batch_samples: int | None = None  # or: padded samples per micro-batch (give one of the two)
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4
    warmup: float = 0.07  # fraction of the steps
    lr_log_alpha: float = 0.02
    lr_lambdas: float = 0.02
    scheduled_groups: list[str] = field(default_factory=lambda: ["weights"])
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    target_sparsity: float | None = 0.8  # of the prunable parameters (docs/method.md section 4); or prune.target_params
    sparsity_warmup: float = 0.07  # fraction of the steps
    seed: int = 0
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    save_every: int = 10_000
    log_every: int = 50


# Data defaults, with their sources.
CROP_SAMPLES = 250_000  # DistilHuBERT config_model.yaml task.sequence_length ("15.6 secs")
MIN_SAMPLES = 32_000  # DPHuBERT lightning.py BucketizeBatchSampler(min_len=32000): 2 s
SCAN_MODES = ("full", "header", "lengths")  # data.manifest.scan_audio: decode all, headers, trust a manifest


@dataclass
class DataConfig:
    source: str | None = None  # LibriSpeech dir, manifest .tsv, or "demo" (espeak-ng corpus in RUN_DIR/corpus)
    crop: int = CROP_SAMPLES  # samples per utterance at most
    min_samples: int = MIN_SAMPLES  # shorter files are skipped (counted)
    max_samples: int | None = None  # longer files are skipped (counted); None: kept, and cropped to `crop`
    collate: str = "pad"  # pad: zero-pad a batch to its longest item | shortest: crop every item to the shortest
    scan: str = "header"  # one of SCAN_MODES
    num_workers: int = 2
    length_jitter: float = 0.1


@dataclass
class RunConfig:
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0: torch's default
    progress: bool = True  # tqdm
    tensorboard: bool = True
    keep_checkpoints: int = 3  # newest checkpoints kept; 0: all


@dataclass
class Config:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    prune: PruneOptions = field(default_factory=PruneOptions)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES = {
    "teacher.preset": ("tiny", "base", "base_plus", "large", "hubert_base", "hubert_large", "wav2vec2_base",
                       "wav2vec2_large"),  # arch.PRESETS and tiny
    "distill.pairing": ("learned", "fixed"),
    "distill.loss": ("mse", "l1_cos"),
    "distill.projection": ("shared", "per_layer", "none"),
    "distill.layer_drop_schedule": ("constant", "linear"),
    "distill.layer_reduce": ("sum", "mean"),
    "train.precision": ("auto", "fp32", "bf16"),
    "data.scan": SCAN_MODES,
    "data.collate": ("pad", "shortest"),
    "run.device": ("auto", "cpu", "cuda"),
}


# ---------------------------------------------------------------------------- checks
def validate(cfg: Config) -> None:
    """Choices, ranges and combinations that would fail later, reported now with the key."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(getattr(cfg, section), name)!r}")
    cfg.prune.check()
    bad_groups = set(cfg.train.scheduled_groups) - set(OPTIMIZER_GROUPS)
    if bad_groups:
        raise ValueError(f"train.scheduled_groups has {sorted(bad_groups)}; groups: {', '.join(OPTIMIZER_GROUPS)}")
    t = cfg.train
    if (t.batch_size is None) == (t.max_batch_samples is None):
        raise ValueError(f"give exactly one of train.batch_size ({t.batch_size}) and train.max_batch_samples "
                         f"({t.max_batch_samples})")
    for key, low in (("train.steps", 1), ("train.batch_size", 1), ("train.max_batch_samples", 1),
                     ("train.accumulate", 1), ("train.save_every", 1), ("train.log_every", 1),
                     ("distill.every", 1), ("data.crop", 1), ("data.min_samples", 0), ("data.num_workers", 0),
                     ("run.threads", 0), ("run.keep_checkpoints", 0), ("teacher.seed", 0), ("train.seed", 0)):
        _check_range(key, get_key(cfg, key), low)
    for key in ("train.lr", "train.lr_log_alpha", "train.lr_lambdas", "train.grad_clip", "distill.weight"):
        if not get_key(cfg, key) > 0.0:  # also NaN
            raise ValueError(f"{key} must be > 0, got {get_key(cfg, key)}")
    for key in ("train.weight_decay", "distill.cos_weight", "data.length_jitter"):
        if not get_key(cfg, key) >= 0.0:
            raise ValueError(f"{key} must be >= 0, got {get_key(cfg, key)}")
    for key in ("train.warmup", "train.sparsity_warmup"):
        if not 0.0 <= get_key(cfg, key) <= 1.0:
            raise ValueError(f"{key} must lie in [0, 1] (a fraction of train.steps), got {get_key(cfg, key)}")
    _check_target(cfg)
    d = cfg.data
    if d.max_samples is not None and d.max_samples < max(d.min_samples, 1):
        raise ValueError(f"data.max_samples must be >= data.min_samples ({d.min_samples}) and >= 1, "
                         f"got {d.max_samples}")
    if not 0.0 <= cfg.distill.layer_drop < 1.0:
        raise ValueError(f"distill.layer_drop must lie in [0, 1), got {cfg.distill.layer_drop}")
    for key in ("distill.teacher_layers", "distill.student_layers"):
        layers = get_key(cfg, key)
        if layers is not None and (not layers or min(layers) < 1):
            raise ValueError(f"{key} must list layers numbered from 1 (the output of layer k), got {layers}")
    if cfg.prune.enabled and not cfg.prune.kinds:
        raise ValueError("prune.kinds is empty while prune.enabled is true; give kinds or prune.enabled=false")


def _check_target(cfg: Config) -> None:
    """One size target: train.target_sparsity (of the prunable parameters) or prune.target_params."""
    sparsity, params = cfg.train.target_sparsity, cfg.prune.target_params
    if cfg.prune.enabled and (sparsity is None) == (params is None):
        raise ValueError(f"give exactly one of train.target_sparsity ({sparsity}) and prune.target_params "
                         f"({params}); set the other to null")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:  # 1 would prune every prunable parameter
        raise ValueError(f"train.target_sparsity must lie in [0, 1), got {sparsity}")
    if params is not None and params < 1:  # the upper bound needs the model: training/models.py
        raise ValueError(f"prune.target_params must be >= 1, got {params}")


def _check_range(key: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise ValueError(f"{key} must be >= {low}, got {value}")


# ---------------------------------------------------------------------------- comparing
def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def get_key(cfg: Config, key: str):
    """The value of a dotted `section.field` key."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    da, db = to_dict(a), to_dict(b)
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]
