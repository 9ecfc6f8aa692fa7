"""Audio file lists: a directory of files or a fairseq TSV manifest, scanned for usable files.

Files that cannot be used (see `audio.REASONS`) are skipped, counted per reason
and logged, never fed and never fatal. DPHuBERT (pyf98/DPHuBERT
`dataset/audio_dataset.py`) reads the same fairseq manifests.

At LibriSpeech scale (281,241 files) a manifest with lengths is read without
touching the audio files: paths go into one bytes buffer (`PathTable`) and
lengths into an int64 array, so memory is about the manifest's size and
DataLoader workers do not copy it object by object (docs/data.md, "Scale").
"""

from __future__ import annotations

import logging
import os
import sys
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from ..config import SCAN_MODES
from .audio import EMPTY, REASONS, TARGET_SR, TOO_SHORT, AudioError, probe_audio, read_audio

log = logging.getLogger(__name__)

AUDIO_EXTS = (".flac", ".wav")
_FS_ENCODING = sys.getfilesystemencoding()
LOG_EACH = 10  # skipped files named one by one per reason (WARNING); the rest at DEBUG, all counted


class AudioEntry(NamedTuple):
    path: Path
    num_samples: int  # at 16 kHz; -1 when not known yet


class PathTable(Sequence):
    """File paths packed in one byte buffer plus int64 start/end arrays (`table[i]` is a str).

    A list of 281,241 `Path` objects is 281,241 Python objects (and their part
    lists) that every DataLoader worker slowly copies (reference counts touch
    every object's page); this is the paths' bytes plus 16 bytes each, in
    three objects. `take` shares the buffer.
    """

    def __init__(self, paths: Iterable[str | os.PathLike] = (), *, _blob=None, _starts=None, _ends=None):
        if _blob is None:
            _blob, offsets = bytearray(), array("q", [0])
            for p in paths:
                _blob += os.fsencode(p)
                offsets.append(len(_blob))
            bounds = np.frombuffer(offsets, dtype=np.int64)
            _starts, _ends = bounds[:-1].copy(), bounds[1:].copy()
        self._blob, self._starts, self._ends = _blob, _starts, _ends

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"path index {i} out of range for {n} paths")
        i %= n
        return self._blob[self._starts[i] : self._ends[i]].decode(_FS_ENCODING, "surrogateescape")

    def take(self, indices: np.ndarray) -> PathTable:
        """The paths at `indices`, as a table sharing this one's buffer."""
        indices = np.asarray(indices, dtype=np.int64)
        return PathTable(_blob=self._blob, _starts=self._starts[indices], _ends=self._ends[indices])

    def nbytes(self) -> int:
        return len(self._blob) + self._starts.nbytes + self._ends.nbytes


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


def manifest_table(tsv: Path) -> tuple[PathTable, np.ndarray]:
    """A manifest's paths (joined to its root) and lengths, read line by line without touching the files."""
    blob, offsets, nums = bytearray(), array("q", [0]), array("q")
    with open(tsv, "rb") as f:
        first = f.readline()
        if not first.strip():
            raise ValueError(f"manifest {tsv} is empty (expected the root directory on line 1)")
        root = first.strip()
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            path, tab, num = line.partition(b"\t")
            if not tab or not path or b"\t" in num or not num.strip().lstrip(b"-").isdigit():
                raise ValueError(f"{tsv}:{lineno}: expected 'path<TAB>num_samples', got {os.fsdecode(line)!r}")
            blob += os.path.join(root, path)  # an absolute path stays as it is
            offsets.append(len(blob))
            nums.append(int(num))
    bounds = np.frombuffer(offsets, dtype=np.int64)
    table = PathTable(_blob=blob, _starts=bounds[:-1].copy(), _ends=bounds[1:].copy())
    return table, np.frombuffer(nums, dtype=np.int64).copy()


def read_manifest(tsv: str | os.PathLike) -> list[AudioEntry]:
    """Read a fairseq manifest: line 1 the root dir, then `path<TAB>num_samples`.

    Relative paths are joined to the root; absolute paths are kept as they are.
    """
    paths, nums = manifest_table(Path(tsv))
    return [AudioEntry(Path(p), n) for p, n in zip(paths, nums.tolist())]


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


def _as_table(source) -> tuple[PathTable, np.ndarray]:
    """A directory, a .tsv manifest, or a sequence of paths / AudioEntry -> (paths, lengths or -1)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = find_audio(path)
            return PathTable(files), np.full(len(files), -1, dtype=np.int64)
        if path.suffix == ".tsv":
            return manifest_table(path)
        raise ValueError(f"audio source {path} is neither a directory nor a .tsv manifest")
    entries = [e if isinstance(e, AudioEntry) else AudioEntry(Path(e), -1) for e in source]
    return PathTable(e.path for e in entries), np.array([e.num_samples for e in entries], dtype=np.int64)


def _check_file(path: str, mode: str, min_samples: int, target_sr: int, mixdown: bool) -> int:
    """The usable length of one file, or AudioError; `mode` ("full" or "header") says how deep to look."""
    if mode == "full":
        return read_audio(path, target_sr, mixdown=mixdown, min_samples=min_samples).shape[0]
    return probe_audio(path, target_sr, mixdown=mixdown, min_samples=min_samples)


class _Skips:
    """Counts per reason; names the first LOG_EACH files of each reason at WARNING, the rest at DEBUG."""

    def __init__(self):
        self.counts = dict.fromkeys(REASONS, 0)

    def add(self, err: AudioError) -> None:
        self.counts[err.reason] += 1
        level = logging.WARNING if self.counts[err.reason] <= LOG_EACH else logging.DEBUG
        log.log(level, "skipping audio file %s", err)
        if self.counts[err.reason] == LOG_EACH + 1:
            log.warning("more files skipped as %s: named at DEBUG level only, counted in the summary", err.reason)


def _scan_lengths(paths: PathTable, nums: np.ndarray, min_samples: int, skips: _Skips) -> np.ndarray:
    """Indices of the entries whose manifest length is usable: no file is opened."""
    if (nums < 0).any():
        raise ValueError(f"scan='lengths' needs known lengths (a manifest); {paths[int(np.argmax(nums < 0))]} has none")
    for reason, bad in ((EMPTY, nums == 0), (TOO_SHORT, (nums > 0) & (nums < min_samples))):
        for i in np.flatnonzero(bad).tolist():
            detail = "manifest says 0 samples" if reason == EMPTY else f"{nums[i]} samples < min_samples {min_samples}"
            skips.add(AudioError(paths[i], reason, detail))
            if skips.counts[reason] > LOG_EACH and not log.isEnabledFor(logging.DEBUG):
                skips.counts[reason] = int(bad.sum())  # the rest counted at once, not named
                break
    return np.flatnonzero(nums >= max(min_samples, 1))


def scan_table(
    source, mode: str = "full", min_samples: int = 0, target_sr: int = TARGET_SR, mixdown: bool = False
) -> tuple[PathTable, np.ndarray, dict[str, int]]:
    """Keep the usable files of `source`; count the others per reason.

    mode: "full" decodes every file (catches everything, including silent and
    NaN audio); "header" reads headers only; "lengths" trusts a manifest's
    lengths and opens no file. Problems a shallow scan misses are caught when
    an item is read. Returns (usable paths, their 16 kHz lengths (int64), {reason: count}).
    """
    if mode not in SCAN_MODES:
        raise ValueError(f"scan mode {mode!r} is not one of {SCAN_MODES}")
    paths, nums = _as_table(source)
    skips = _Skips()
    if mode == "lengths":
        kept = _scan_lengths(paths, nums, min_samples, skips)
        lengths = nums[kept]
    else:
        kept_list, length_list = array("q"), array("q")
        for i in tqdm(range(len(paths)), desc=f"scanning audio ({mode})", unit="file", disable=len(paths) < 1000):
            try:
                length_list.append(_check_file(paths[i], mode, min_samples, target_sr, mixdown))
                kept_list.append(i)
            except AudioError as err:
                skips.add(err)
        kept, lengths = np.frombuffer(kept_list, dtype=np.int64), np.frombuffer(length_list, dtype=np.int64).copy()
    if any(skips.counts.values()):
        counts = ", ".join(f"{k}={v}" for k, v in skips.counts.items() if v)
        log.warning("kept %d audio files, skipped %d (%s)", len(kept), sum(skips.counts.values()), counts)
    return paths.take(kept), lengths, skips.counts


def scan_audio(
    source, mode: str = "full", min_samples: int = 0, target_sr: int = TARGET_SR, mixdown: bool = False
) -> tuple[list[AudioEntry], dict[str, int]]:
    """`scan_table` as (usable entries with their 16 kHz lengths, {reason: count})."""
    paths, lengths, skipped = scan_table(source, mode, min_samples, target_sr, mixdown)
    return [AudioEntry(Path(p), n) for p, n in zip(paths, lengths.tolist())], skipped
