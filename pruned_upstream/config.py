"""Training configuration: typed defaults, YAML files of overrides, `key=value` overrides last.

    cfg = load_config("wavlm_base_sp80", ["train.steps=1000", "data.source=train.tsv"])
    save_config(cfg, run_dir / "config.yaml")      # the resolved config, beside the outputs

The dataclasses below hold every default (the paper's recipe for WavLM Base;
the sources of the values are in `configs/wavlm_base_sp80.yaml`). A YAML file
holds only what it changes, and may start from another config with
`base: NAME|FILE`. Unknown keys and values of the wrong type are errors that
name the key and the file. No torch here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .gating import MASK_KINDS, PruneConfig

CONFIG_DIR = Path(__file__).parent / "configs"
# The optimizer's parameter groups (training/sparsity.py make_optimizers): weights and log_alpha
# by descent, the Lagrange multipliers by ascent.
OPTIMIZER_GROUPS = ("weights", "log_alpha", "lambdas")
# Keys a resumed run may change: they do not touch the computation.
RESUMABLE_CHANGES = ("train.save_every", "train.log_every", "data.num_workers", "run.progress",
                     "run.tensorboard", "run.keep_checkpoints")


@dataclass
class TeacherConfig:
    checkpoint: str | None = None  # original .pt, Hugging Face dir or our .safetensors; None: random weights
    preset: str = "tiny"  # random teacher: tiny | base | base_plus | large
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
    layer_drop: float = 0.0  # stochastic depth of the student (seed 001); 0: off, as the paper
    layer_drop_schedule: str = "constant"  # constant | linear (rising with depth, Huang et al. 2016)


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
    target_sparsity: float = 0.8
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
    "teacher.preset": ("tiny", "base", "base_plus", "large"),
    "distill.pairing": ("learned", "fixed"),
    "distill.loss": ("mse", "l1_cos"),
    "distill.projection": ("shared", "per_layer", "none"),
    "distill.layer_drop_schedule": ("constant", "linear"),
    "train.precision": ("auto", "fp32", "bf16"),
    "data.scan": SCAN_MODES,
    "run.device": ("auto", "cpu", "cuda"),
}


# ---------------------------------------------------------------------------- loading
def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- the YAML file (and its `base` chain) <- `key=value` overrides; validated."""
    cfg = Config()
    if name_or_path:
        path = config_path(name_or_path)
        apply_mapping(cfg, read_yaml(path), str(path))
    for item in overrides:
        key, value = _split_override(item)
        set_key(cfg, key, value, "the command line", raw=True)
    validate(cfg)
    return cfg


def config_path(name_or_path: str) -> Path:
    """A YAML file, or the name of a config shipped in pruned_upstream/configs."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a named config ({', '.join(known)})")


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The file's mapping merged over its `base` config (recursively)."""
    path = Path(path).resolve()
    if path in seen:
        raise ValueError(f"config {path}: `base` chain loops back to itself")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = path.parent / base if (path.parent / str(base)).is_file() else config_path(str(base))
    return _merge(read_yaml(base_path, seen + (path,)), data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_mapping(cfg: Config, data: dict, source: str) -> None:
    for section, values in data.items():
        if section not in _fields(Config):
            raise ValueError(f"{source}: unknown section {section!r}; known: {', '.join(_fields(Config))}")
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping, got {values!r}")
        for key, value in values.items():
            set_key(cfg, f"{section}.{key}", value, source)


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} is not key=value (e.g. train.steps=100)")
    return key.strip(), value


def set_key(cfg: Config, key: str, value, source: str, raw: bool = False) -> None:
    """Set `section.field[.subkey]` to `value`, coerced to the field's type."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in _fields(Config):
        raise ValueError(f"{source}: unknown config key {key!r}; keys look like train.steps")
    section = getattr(cfg, parts[0])
    name = parts[1]
    if name not in _fields(type(section)):
        raise ValueError(f"{source}: unknown config key {key!r}; {parts[0]} has: {', '.join(_fields(type(section)))}")
    tp = typing.get_type_hints(type(section))[name]
    if len(parts) > 2:  # a key inside a mapping field: prune.ste.mha, teacher.arch.num_layers
        current = getattr(section, name)
        if not isinstance(current, dict) or len(parts) > 3:
            raise ValueError(f"{source}: unknown config key {key!r}")
        if name == "ste" and parts[2] not in MASK_KINDS:
            raise ValueError(f"{source}: unknown config key {key!r}; mask kinds: {', '.join(MASK_KINDS)}")
        inner = bool if name == "ste" else typing.Any
        current[parts[2]] = _coerce(_parse(value, inner) if raw else value, inner, key, source)
        return
    value = _coerce(_parse(value, tp) if raw else value, tp, key, source)
    if isinstance(value, dict) and isinstance(getattr(section, name), dict):
        value = {**getattr(section, name), **value}  # a mapping field is updated, not replaced
    setattr(section, name, value)
    if hasattr(section, "__post_init__"):
        section.__post_init__()


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _parse(text: str, tp):
    """A command-line value: YAML syntax, except that a str field takes the text as it is."""
    if tp is str or (_is_optional(tp) and _non_none(tp) == [str]):
        return None if text.strip().lower() in ("null", "none", "~") and tp is not str else text
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _non_none(tp) -> list:
    return [a for a in typing.get_args(tp) if a is not type(None)]


def _coerce(value, tp, key: str, source: str):
    """`value` as type `tp`, or a ValueError naming the key, the value and the type."""
    if tp is typing.Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in _non_none(tp):
            try:
                return _coerce(value, arg, key, source)
            except ValueError:
                continue
        raise _type_error(key, value, tp, source)
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise _type_error(key, value, tp, source)
        (inner,) = typing.get_args(tp)
        return [_coerce(_parse(v.strip(), inner) if isinstance(v, str) else v, inner, key, source) for v in items]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, tp, source)
        inner = typing.get_args(tp)[1] if typing.get_args(tp) else typing.Any
        return {str(k): _coerce(v, inner, f"{key}.{k}", source) for k, v in value.items()}
    return _scalar(value, tp, key, source)


def _scalar(value, tp, key: str, source: str):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _float_or_none(value) if isinstance(value, (str, float)) else None
        if number is not None and number.is_integer():  # 200_000, 2e5 (YAML 1.1 reads 2e5 as a string)
            return int(number)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _float_or_none(value) is not None:
            return _float_or_none(value)  # YAML 1.1 reads 2e-4 as a string
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise _type_error(key, value, tp, source)


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _type_error(key, value, tp, source) -> ValueError:
    name = getattr(tp, "__name__", str(tp))
    return ValueError(f"{source}: {key} must be {name}, got {value!r}")


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
    _check_range("train.steps", t.steps, 1)
    _check_range("train.accumulate", t.accumulate, 1)
    _check_range("train.save_every", t.save_every, 1)
    _check_range("train.log_every", t.log_every, 1)
    _check_range("distill.every", cfg.distill.every, 1)
    _check_range("data.crop", cfg.data.crop, 1)
    for key in ("train.warmup", "train.sparsity_warmup", "train.target_sparsity"):
        value = getattr(t, key.split(".")[1])
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{key} must lie in [0, 1], got {value}")
    if not 0.0 <= cfg.distill.layer_drop < 1.0:
        raise ValueError(f"distill.layer_drop must lie in [0, 1), got {cfg.distill.layer_drop}")


def _check_range(key: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{key} must be >= {low}, got {value}")


# ---------------------------------------------------------------------------- saving
def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_saved(path) -> Config:
    """A resolved config written by `save_config` (every key present)."""
    cfg = Config()
    apply_mapping(cfg, yaml.safe_load(Path(path).read_text()) or {}, str(path))
    validate(cfg)
    return cfg


def differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    da, db = to_dict(a), to_dict(b)
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]
