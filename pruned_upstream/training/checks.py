"""Checks of a config that need more than the config: done before any model or data is loaded.

    check_before_training(cfg)     # ValueError / FileNotFoundError, one line naming the key

- the teacher's depth (read from the file's header or config, never its weights)
  against `distill.teacher_layers`, and the student's against `distill.student_layers`;
- CNN gates (`prune.kinds` with "conv") need the group-norm extractor and at
  least two conv layers: the last one feeds a LayerNorm over channels and is
  never gated (model/prunable.py), so a one-layer CNN would have none to gate;
- `data.source` holds audio: a directory with .flac/.wav files, or a manifest
  with at least one row whose file exists among its first rows.
"""

from __future__ import annotations

from pathlib import Path

from ..arch import WavLMArch
from ..checkpoints import CheckpointError, read_arch
from ..config import Config
from ..data.manifest import find_audio, manifest_table
from ..model.depth import parse_spec
from .distill import default_teacher_layers
from .models import teacher_arch

MANIFEST_ROWS_CHECKED = 100  # rows of a manifest whose files must not all be missing


def check_before_training(cfg: Config) -> None:
    teacher = model_arch(cfg.teacher.checkpoint, "teacher.checkpoint") if cfg.teacher.checkpoint else \
        _random_teacher(cfg)
    student = model_arch(cfg.student.checkpoint, "student.checkpoint") if cfg.student.checkpoint else teacher
    depth = student.num_layers
    if cfg.student.drop_layers:
        try:
            spec = parse_spec(cfg.student.drop_layers, depth)
        except ValueError as err:
            raise ValueError(f"student.drop_layers={cfg.student.drop_layers!r}: {err}") from None
        depth -= spec[1] if isinstance(spec, tuple) else len(spec)
    d = cfg.distill
    teacher_layers = d.teacher_layers or default_teacher_layers(teacher.num_layers, d.every)
    _check_layers("distill.teacher_layers", teacher_layers, teacher.num_layers, "teacher")
    if d.pairing == "fixed":
        _check_layers("distill.student_layers", d.student_layers or teacher_layers, depth, "student")
    if cfg.prune.enabled and "conv" in cfg.prune.kinds:
        if student.extractor_mode != "default":
            raise ValueError("prune.kinds has conv: CNN gates need the group-norm extractor (extractor_mode "
                             f"default), the student's is {student.extractor_mode!r}")
        if len(student.conv_layers) < 2:
            raise ValueError("prune.kinds has conv: the last conv layer is never gated (it feeds a LayerNorm over "
                             f"its channels) and the student's CNN has {len(student.conv_layers)} layer(s); "
                             "allowed: 2 or more conv layers")
    check_data_source(cfg.data.source)


def _random_teacher(cfg: Config) -> WavLMArch:
    try:
        return teacher_arch(cfg.teacher.preset, cfg.teacher.arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"teacher.arch={cfg.teacher.arch}: {err}") from None


def _check_layers(key: str, layers, depth: int, who: str) -> None:
    bad = [k for k in layers if not 1 <= k <= depth]
    if bad:
        raise ValueError(f"{key}={list(layers)}: {bad} beyond the {who}'s depth; allowed: 1..{depth} "
                         f"(the output of layer k)")


def model_arch(path, key: str) -> WavLMArch:
    """A model file's architecture from its header or config, never its weights (checkpoints.read_arch)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{key}={path}: no such file or directory")
    try:
        return read_arch(path)
    except CheckpointError as err:
        raise CheckpointError(path, f"{key}: cannot read its architecture ({err.problem})") from None


def check_data_source(source) -> None:
    """data.source holds audio (a cheap look; files are read and checked when the dataset scans them)."""
    if not source:
        raise ValueError("data.source is not set: a directory of .flac/.wav files, a manifest .tsv, or demo")
    if source == "demo":
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data.source={source}: no such file or directory")
    if path.is_dir():
        try:
            find_audio(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"data.source={source}: {err}") from None
        return
    if path.suffix != ".tsv":
        raise ValueError(f"data.source={source}: neither a directory nor a manifest .tsv")
    paths, _ = manifest_table(path)  # packed: a LibriSpeech-sized manifest costs a fraction of a second
    if not len(paths):
        raise ValueError(f"data.source={source}: the manifest lists no audio file")
    first = paths[:MANIFEST_ROWS_CHECKED]
    if not any(Path(p).is_file() for p in first):
        raise FileNotFoundError(f"data.source={source}: none of its first {len(first)} files exists "
                                f"(e.g. {first[0]}); is line 1, the root directory, right?")
