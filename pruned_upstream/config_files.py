"""Configuration files: typed defaults <- YAML files of overrides <- `key=value` overrides last.

    cfg = load_config("wavlm_base_sp80", ["train.steps=1000", "data.source=train.tsv"])
    save_config(cfg, run_dir / "config.yaml")      # the resolved config, beside the outputs

A YAML file holds only what it changes, and may start from another config with
`base: NAME|FILE`. Unknown keys and values of the wrong type are errors that
name the key and the file. No torch here.

Every YAML read here (a `--config` file, its `base` chain, a run's saved config.yaml,
a command-line value) goes through small_files: regular files of at most 1 MB, safe
YAML without anchors or aliases (a 600-byte alias bomb would expand to gigabytes), and
any YAML error, an unknown `!!python/...` tag included, is one line naming the file.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path

import yaml

from .config import Config, to_dict, validate
from .errors import CheckpointError
from .gating import MASK_KINDS
from .small_files import is_link, load_yaml, read_yaml_file

CONFIG_DIR = Path(__file__).parent / "configs"


# ---------------------------------------------------------------------------- loading
def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- the YAML file (and its `base` chain) <- `key=value` overrides; validated."""
    return config_over(Config(), name_or_path, overrides)


def config_over(base: Config, name_or_path: str = "", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A copy of `base` <- the YAML file (and its `base` chain) <- `key=value` overrides; validated."""
    cfg = copy.deepcopy(base)
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
    data = read_yaml_file(path) or {}
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
        return load_yaml(text, "the command line") if text.strip() else text
    except CheckpointError:  # not YAML (or an alias): the text as it is
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


# ---------------------------------------------------------------------------- saving
def save_config(cfg: Config, path) -> None:
    """Written to a new temp file (O_EXCL, a name nobody can plant), then renamed: a reader (or a
    crash) never sees half a config; `path` a symbolic link is refused (run_files.write_replacing)."""
    from .run_files import write_replacing

    write_replacing(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_saved(path) -> Config:
    """A resolved config written by `save_config` (every key present)."""
    if is_link(path):  # nothing inside a run directory is followed through a symlink
        raise CheckpointError(path, "a symbolic link; a run's saved config is read only as a regular file")
    data = read_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise CheckpointError(path, f"expected a mapping of sections, got {type(data).__name__}")
    cfg = Config()
    apply_mapping(cfg, data, str(path))
    validate(cfg)
    return cfg
