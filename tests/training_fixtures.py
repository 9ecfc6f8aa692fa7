"""What the training tests share: a small manifest of voiced audio and the tiny-run overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

TINY_RUN = ["teacher.arch.num_layers=2", "distill.every=1", "data.crop=8000", "data.min_samples=1000",
            "train.batch_size=2", "run.threads=1", "run.progress=false", "run.tensorboard=false",
            "train.log_every=1"]


def write_manifest(root: Path, count: int = 12, seed: int = 0) -> str:
    """`count` utterances of 0.4-0.75 s: gliding harmonics in noise, 16 kHz; returns the manifest's path."""
    rng = np.random.default_rng(seed)
    rows = [str(root)]
    for i in range(count):
        n = int(rng.integers(6400, 12000))
        t = np.arange(n) / 16000
        f0 = rng.uniform(90, 250) * (1 + 0.2 * t)
        wav = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * 0.2 + 0.02 * rng.standard_normal(n)
        sf.write(root / f"u{i}.wav", wav.astype(np.float32), 16000)
        rows.append(f"u{i}.wav\t{n}")
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    return str(root / "train.tsv")


def tiny(manifest: str, *extra: str) -> list[str]:
    """Overrides of the demo config: a 2-layer tiny teacher, batches of 2, no progress bar."""
    return [f"data.source={manifest}", *TINY_RUN, *extra]
