"""`pruned-upstream export SOURCE --out model.safetensors [--drop-layers SPEC [--audio DIR] | --magnitude-like PRUNED]`.

SOURCE is a run directory or one of its checkpoints (the student is exported:
zeros dropped, mask values folded in), or a model file / Hugging Face directory
(already gate-free: only `--drop-layers` changes it). With `--magnitude-like
PRUNED`, SOURCE is a dense model file and the output its magnitude-pruned copy
with PRUNED's counts: the equal-size baseline without distillation (docs/baselines.md).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import load_model, read_arch, save_model
from ..exporting import export
from ..run_dir import load_student


def export_command(source: str, out: str, drop_layers=None, audio_dir=None, magnitude_like=None) -> int:
    path = Path(source)
    is_run = path.is_dir() and not (path / "config.json").exists()  # a run directory or one of its checkpoints
    if magnitude_like is not None:
        return _magnitude_command(path, is_run, magnitude_like, out, drop_layers)
    compact = export(load_student(path)) if is_run else load_model(path)
    if drop_layers:
        from ..analysis.layer_choice import drop_layers as drop
        from ..analysis.probes import load_audio_sample

        audio = load_audio_sample(audio_dir) if audio_dir else None
        compact = drop(compact, drop_layers, audio=audio)
    save_model(compact, out)
    print(f"exported {out}: {compact.num_params() / 1e6:.2f} M parameters")
    return 0


def _magnitude_command(path: Path, is_run: bool, like_path: str, out: str, drop_layers) -> int:
    from ..analysis.magnitude import check_compatible, magnitude_prune

    if is_run:
        raise ValueError(f"--magnitude-like prunes a dense model file, and {path} is a run directory: give its teacher")
    if drop_layers:
        raise ValueError("--magnitude-like and --drop-layers do not combine: the baseline copies the pruned model's layers")
    like = read_arch(like_path)
    check_compatible(read_arch(path), like)  # before any weight is read
    baseline = magnitude_prune(load_model(path), like)
    save_model(baseline, out)
    print(f"exported {out}: {baseline.num_params() / 1e6:.2f} M parameters, "
          f"{path.name} magnitude-pruned to the counts of {Path(like_path).name}")
    return 0
