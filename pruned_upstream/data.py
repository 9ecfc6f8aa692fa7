"""Audio for distillation: file lists and manifests, a cropping dataset, bucketed batches.

Behaviour follows the two reference recipes:
- DistilHuBERT pre-training (s3prl `pretrain/distiller/dataset.py`,
  `config_model.yaml`): each utterance is randomly cropped to
  `sequence_length` = 250000 samples, batches group utterances of similar
  length, and shorter ones are zero-padded with their lengths kept.
- DPHuBERT (pyf98/DPHuBERT `dataset/audio_dataset.py`, `lightning.py`):
  fairseq TSV manifests, utterances under 32000 samples dropped, batches
  bounded by a total sample budget, whole batches dealt out to DDP ranks.

Unlike both, files that cannot be used (see `audio.REASONS`) are skipped,
counted per reason and logged, never fed and never fatal; every random choice
is a pure function of (seed, epoch, index), so a resumed run is bit-identical.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm
from torch.utils.data import Dataset, Sampler

from .audio import EMPTY, REASONS, TARGET_SR, TOO_SHORT, AudioError, probe_audio, read_audio

log = logging.getLogger(__name__)

AUDIO_EXTS = (".flac", ".wav")
CROP_SAMPLES = 250_000  # DistilHuBERT config_model.yaml task.sequence_length ("15.6 secs")
MIN_SAMPLES = 32_000  # DPHuBERT lightning.py BucketizeBatchSampler(min_len=32000): 2 s
SCAN_MODES = ("full", "header", "lengths")


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


# ---------------------------------------------------------------- dataset


def crop_offset(seed: int, epoch: int, index: int, length: int, crop: int) -> int:
    """Start of the random crop of item `index` in `epoch`: uniform in [0, length - crop].

    A pure function of its arguments (numpy's SeedSequence hashes the triple),
    so workers, resumed runs and DDP ranks draw the same crop for the same item.
    """
    if length <= crop:
        return 0
    rng = np.random.default_rng([seed, epoch, index])
    return int(rng.integers(0, length - crop + 1))


class AudioDataset(Dataset):
    """Usable audio files, each read at 16 kHz mono and randomly cropped to `crop_samples`.

    `dataset[i]` is a float32 tensor (T,), T <= crop_samples; `dataset[(i, epoch)]`
    fixes the epoch explicitly (otherwise `set_epoch` sets it, as with
    DistributedSampler; it reaches DataLoader workers when they are not
    persistent). `skipped` counts unusable files per reason; `lengths` holds
    the item lengths (after cropping) for `LengthBucketSampler`.
    """

    def __init__(
        self,
        source,
        crop_samples: int = CROP_SAMPLES,
        min_samples: int = MIN_SAMPLES,
        seed: int = 0,
        scan: str = "full",
        target_sr: int = TARGET_SR,
    ):
        if crop_samples <= 0 or min_samples < 0:
            raise ValueError(f"need crop_samples > 0 and min_samples >= 0, got {crop_samples}, {min_samples}")
        self.crop_samples, self.min_samples = crop_samples, min_samples
        self.seed, self.target_sr, self.epoch = seed, target_sr, 0
        self.entries, self.skipped = scan_audio(source, scan, min_samples, target_sr)
        if not self.entries:
            raise ValueError(f"no usable audio in {source!r}: skipped {self.skipped}")
        self.lengths = [min(e.num_samples, crop_samples) for e in self.entries]
        self._bad: set[int] = set()  # items found unusable when read (shallow scans)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        n = len(self.entries)
        for step in range(n):
            # A file that fails now is replaced by the next usable one, always the
            # same one, so the substitution is reproducible too.
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                wav = read_audio(self.entries[j].path, self.target_sr, min_samples=self.min_samples)
            except AudioError as err:
                self._mark_bad(j, err)
                continue
            start = crop_offset(self.seed, epoch, index, wav.shape[0], self.crop_samples)
            return wav[start : start + self.crop_samples]
        raise RuntimeError(f"none of the {n} audio files could be read; skipped {self.skipped}")

    def _mark_bad(self, j: int, err: AudioError) -> None:
        # Counted in the process that read it (a DataLoader worker's copy when
        # num_workers > 0); the log line is the record that always survives.
        self._bad.add(j)
        self.skipped[err.reason] += 1
        log.warning("skipping audio file %s; using the next file instead", err)


def collate(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D waveforms -> (wav (B, T_max) float32 zero-padded at the end, lengths (B,) long)."""
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    for i, w in enumerate(batch):
        if w.dim() != 1:
            raise ValueError(f"batch item {i} has shape {tuple(w.shape)}, expected (T,)")
    lengths = torch.tensor([w.shape[0] for w in batch], dtype=torch.long)  # (B,)
    wav = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)  # (B, T_max)
    for i, w in enumerate(batch):
        wav[i, : w.shape[0]] = w
    return wav, lengths


# ---------------------------------------------------------------- batching


def jittered_length_order(lengths: np.ndarray, rng: np.random.Generator | None, jitter: float) -> np.ndarray:
    """Indices sorted by length x U(1 - jitter, 1 + jitter): similar lengths stay
    together, yet items of near-equal length regroup from one epoch to the next.
    `rng=None` sorts by the exact length (stable)."""
    if rng is None:
        return np.argsort(lengths, kind="stable")
    keys = lengths * rng.uniform(1.0 - jitter, 1.0 + jitter, size=len(lengths))
    return np.argsort(keys, kind="stable")


def fill_batches(
    order: np.ndarray, lengths: np.ndarray, batch_size: int | None, max_batch_samples: int | None
) -> list[list[int]]:
    """Cut `order` into consecutive batches of `batch_size` items, or of at most
    `max_batch_samples` padded samples (B x T_max, the memory a batch takes)."""
    batches, batch, longest = [], [], 0
    for i in order.tolist():
        longest_if_added = max(longest, int(lengths[i]))
        full = (
            len(batch) == batch_size
            if batch_size is not None
            else (len(batch) + 1) * longest_if_added > max_batch_samples
        )
        if batch and full:
            batches.append(batch)
            batch, longest_if_added = [], int(lengths[i])
        batch.append(i)
        longest = longest_if_added
    if batch:
        batches.append(batch)
    return batches


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar-length items, reshuffled each epoch, sharded over ranks, resumable.

    Each epoch (seeded by (seed, epoch)): items are ordered by jittered length
    (`jittered_length_order`), cut into batches (`fill_batches`), and the
    batches are shuffled. Every rank computes the same plan and takes batches
    rank, rank + world_size, ...; the last (n_batches mod world_size) batches
    of the shuffled plan are left out so all ranks run the same number of steps.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int | None = None,
        max_batch_samples: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        length_jitter: float = 0.1,
        rank: int = 0,
        world_size: int = 1,
    ):
        if (batch_size is None) == (max_batch_samples is None):
            raise ValueError(
                f"give exactly one of batch_size ({batch_size}) and max_batch_samples ({max_batch_samples})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if max_batch_samples is not None and self.lengths.max() > max_batch_samples:
            i = int(self.lengths.argmax())
            raise ValueError(
                f"item {i} has {self.lengths[i]} samples > max_batch_samples {max_batch_samples}"
            )
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.max_batch_samples = batch_size, max_batch_samples
        self.seed, self.shuffle, self.length_jitter = seed, shuffle, length_jitter
        self.rank, self.world_size = rank, world_size
        self.epoch, self._start, self._yielded = 0, 0, 0

    def plan(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch` (every rank's), in the order they are dealt out."""
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        order = jittered_length_order(self.lengths, rng, self.length_jitter)
        batches = fill_batches(order, self.lengths, self.batch_size, self.max_batch_samples)
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        batches = self.plan(epoch)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a position restored by load_state_dict survives only for its own epoch."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        self._yielded = start
        for batch in self.rank_batches(self.epoch)[start:]:
            self._yielded += 1
            yield batch

    def state_dict(self, batches_done: int | None = None) -> dict:
        """Epoch and position. `batches_done` is the number of this epoch's
        batches the training loop has finished; by default the number this
        sampler has handed out, which runs ahead of training when DataLoader
        workers prefetch (num_workers > 0): pass the loop's count then."""
        done = self._yielded if batches_done is None else batches_done
        return {"epoch": self.epoch, "batch": done, "seed": self.seed,
                "world_size": self.world_size, "num_items": len(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`: the next iteration skips exactly its consumed batches."""
        mine = {"seed": self.seed, "world_size": self.world_size, "num_items": len(self.lengths)}
        for key, value in mine.items():
            if state[key] != value:
                raise ValueError(f"sampler state has {key}={state[key]}, this sampler has {value}: cannot resume")
        self.epoch, self._start, self._yielded = state["epoch"], state["batch"], state["batch"]
