"""`pruned-upstream export SOURCE --out model.safetensors [--drop-layers SPEC [--audio DIR]]`.

SOURCE is a run directory or one of its checkpoints (the student is exported:
zeros dropped, mask values folded in), or a model file / Hugging Face directory
(already gate-free: only `--drop-layers` changes it).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import load_model, save_model
from ..exporting import export
from ..run_dir import load_student


def export_command(source: str, out: str, drop_layers=None, audio_dir=None) -> int:
    path = Path(source)
    if path.is_dir() and not (path / "config.json").exists():  # a run directory or one of its checkpoints
        compact = export(load_student(path))
    else:
        compact = load_model(path)
    if drop_layers:
        from ..analysis.layer_choice import drop_layers as drop
        from ..analysis.probes import load_audio_sample

        audio = load_audio_sample(audio_dir) if audio_dir else None
        compact = drop(compact, drop_layers, audio=audio)
    save_model(compact, out)
    print(f"exported {out}: {compact.num_params() / 1e6:.2f} M parameters")
    return 0
