"""Audio file lists: a directory of files or a fairseq TSV manifest, scanned for usable files.

Files that cannot be used (see `audio.REASONS`) are skipped, counted per reason
and logged, never fed and never fatal. DPHuBERT (pyf98/DPHuBERT
`dataset/audio_dataset.py`) reads the same fairseq manifests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from ..config import SCAN_MODES
from .audio import EMPTY, REASONS, TARGET_SR, TOO_SHORT, AudioError, probe_audio, read_audio

log = logging.getLogger(__name__)

AUDIO_EXTS = (".flac", ".wav")


class AudioEntry(NamedTuple):
    path: Path
    num_samples: int  # at 16 kHz; -1 when not known yet


# ---------------------------------------------------------------- file lists


def find_audio(root: str | os.PathLike, exts: Sequence[str] = AUDIO_EXTS) -> list[Path]:
    """All files under `root` (recursively, e.g. a LibriSpeech split) ending in `exts`, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio root {root} is not a directory")
    exts = tuple(e.lower() for e in exts)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file())
    if not files:
        raise FileNotFoundError(f"no {'/'.join(exts)} files under {root}")
    return files


def read_manifest(tsv: str | os.PathLike) -> list[AudioEntry]:
    """Read a fairseq manifest: line 1 the root dir, then `path<TAB>num_samples`.

    Relative paths are joined to the root; absolute paths are kept as they are.
    """
    tsv = Path(tsv)
    lines = tsv.read_text().splitlines()
    if not lines:
        raise ValueError(f"manifest {tsv} is empty (expected the root directory on line 1)")
    root = Path(lines[0].strip())
    entries = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 2 or not fields[1].strip().lstrip("-").isdigit():
            raise ValueError(f"{tsv}:{lineno}: expected 'path<TAB>num_samples', got {line!r}")
        entries.append(AudioEntry(root / fields[0], int(fields[1])))
    return entries


def write_manifest(
    tsv: str | os.PathLike, entries: Sequence[AudioEntry], root: str | os.PathLike | None = None
) -> Path:
    """Write `entries` as a fairseq manifest; paths under `root` are written relative to it."""
    tsv = Path(tsv)
    if root is None:  # the deepest directory holding every file
        root = os.path.commonpath([str(Path(e.path).resolve().parent) for e in entries]) if entries else "."
    root = Path(root).resolve()
    rows = [str(root)]
    for path, num in entries:
        if num < 0:
            raise ValueError(f"manifest entry {path} has unknown length {num}; scan it first (scan_audio)")
        path = Path(path).resolve()
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        rows.append(f"{rel}\t{num}")
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text("\n".join(rows) + "\n")
    return tsv


def _as_entries(source) -> list[AudioEntry]:
    """A directory, a .tsv manifest, or a sequence of paths / AudioEntry -> entries."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return [AudioEntry(p, -1) for p in find_audio(path)]
        if path.suffix == ".tsv":
            return read_manifest(path)
        raise ValueError(f"audio source {path} is neither a directory nor a .tsv manifest")
    return [e if isinstance(e, AudioEntry) else AudioEntry(Path(e), -1) for e in source]


def _check_entry(entry: AudioEntry, mode: str, min_samples: int, target_sr: int) -> int:
    """The usable length of one entry, or AudioError; `mode` says how deep to look."""
    if mode == "full":
        return read_audio(entry.path, target_sr, min_samples=min_samples).shape[0]
    if mode == "header":
        return probe_audio(entry.path, target_sr, min_samples=min_samples)
    if entry.num_samples < 0:
        raise ValueError(f"scan='lengths' needs known lengths (a manifest); {entry.path} has none")
    if entry.num_samples == 0:
        raise AudioError(entry.path, EMPTY, "manifest says 0 samples")
    if entry.num_samples < min_samples:
        raise AudioError(entry.path, TOO_SHORT, f"{entry.num_samples} samples < min_samples {min_samples}")
    return entry.num_samples


def scan_audio(
    source, mode: str = "full", min_samples: int = 0, target_sr: int = TARGET_SR
) -> tuple[list[AudioEntry], dict[str, int]]:
    """Keep the usable entries of `source`; count the others per reason.

    mode: "full" decodes every file (catches everything, including silent and
    NaN audio); "header" reads headers only; "lengths" trusts a manifest's
    lengths. Problems a shallow scan misses are caught when an item is read.
    Returns (usable entries with their 16 kHz lengths, {reason: count}).
    """
    if mode not in SCAN_MODES:
        raise ValueError(f"scan mode {mode!r} is not one of {SCAN_MODES}")
    entries = _as_entries(source)
    kept, skipped = [], dict.fromkeys(REASONS, 0)
    for entry in tqdm(entries, desc=f"scanning audio ({mode})", unit="file", disable=len(entries) < 1000):
        try:
            kept.append(AudioEntry(Path(entry.path), _check_entry(entry, mode, min_samples, target_sr)))
        except AudioError as err:
            skipped[err.reason] += 1
            log.warning("skipping audio file %s", err)
    if any(skipped.values()):
        counts = ", ".join(f"{k}={v}" for k, v in skipped.items() if v)
        log.warning("kept %d audio files, skipped %d (%s)", len(kept), sum(skipped.values()), counts)
    return kept, skipped
