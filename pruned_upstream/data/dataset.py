"""Audio for distillation: a dataset of randomly cropped utterances, and its collate function.

Behaviour follows the two reference recipes:
- DistilHuBERT pre-training (s3prl `pretrain/distiller/dataset.py`,
  `config_model.yaml`): each utterance is randomly cropped to
  `sequence_length` = 250000 samples, batches group utterances of similar
  length, and shorter ones are zero-padded with their lengths kept.
- DPHuBERT (pyf98/DPHuBERT `dataset/audio_dataset.py`, `lightning.py`):
  fairseq TSV manifests, utterances under 32000 samples dropped, batches
  bounded by a total sample budget, whole batches dealt out to DDP ranks.

DPHuBERT's batches are reproduced by `max_samples` (longer files skipped, as
its BucketizeBatchSampler `max_len` does) and `CropToShortest` (its
`CollateFnAudio(pad=False, rand_crop=True)`: every item of a batch cropped at a
random offset to the batch's shortest, so nothing is padded).

Unlike both, files that cannot be used (see `audio.REASONS`) are skipped,
counted per reason and logged, never fed and never fatal; every random choice
is a pure function of (seed, epoch, index), so a resumed run is bit-identical.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import CROP_SAMPLES, MIN_SAMPLES
from .audio import TARGET_SR, AudioError, read_audio
from .manifest import scan_table

log = logging.getLogger(__name__)


TOO_LONG = "too_long"  # more samples than data.max_samples: skipped when the dataset is built


def crop_offset(seed: int, epoch: int, index: int, length: int, crop: int, stream: int = 0) -> int:
    """Start of the random crop of item `index` in `epoch`: uniform in [0, length - crop].

    A pure function of its arguments (numpy's SeedSequence hashes the triple),
    so workers, resumed runs and DDP ranks draw the same crop for the same item.
    `stream` 1 draws the batch crop (`CropToShortest`) independently of the item's crop (0).
    """
    if length <= crop:
        return 0
    rng = np.random.default_rng([seed, epoch, index] + ([stream] if stream else []))
    return int(rng.integers(0, length - crop + 1))


class AudioDataset(Dataset):
    """Usable audio files, each read at 16 kHz mono and randomly cropped to `crop_samples`.

    `dataset[i]` is a float32 tensor (T,), T <= crop_samples; `dataset[(i, epoch)]`
    fixes the epoch explicitly (otherwise `set_epoch` sets it, as with
    DistributedSampler; it reaches DataLoader workers when they are not
    persistent). `skipped` counts unusable files per reason; `lengths` holds
    the item lengths (after cropping) for `LengthBucketSampler`. Files longer than
    `max_samples` (None: no bound) are skipped as `too_long`. Multi-channel
    files are averaged to mono (`mixdown`, as fairseq's `RawAudioDataset.postprocess`
    does, `fairseq/data/audio/raw_audio_dataset.py`); `mixdown=False` skips them.
    """

    def __init__(
        self,
        source,
        crop_samples: int = CROP_SAMPLES,
        min_samples: int = MIN_SAMPLES,
        seed: int = 0,
        scan: str = "full",
        target_sr: int = TARGET_SR,
        mixdown: bool = True,
        bad_log=None,
        max_samples: int | None = None,
    ):
        if crop_samples <= 0 or min_samples < 0:
            raise ValueError(f"need crop_samples > 0 and min_samples >= 0, got {crop_samples}, {min_samples}")
        if max_samples is not None and max_samples < max(min_samples, 1):
            raise ValueError(f"need max_samples >= min_samples and >= 1, got {max_samples}, {min_samples}")
        self.crop_samples, self.min_samples = crop_samples, min_samples
        self.seed, self.target_sr, self.mixdown, self.epoch = seed, target_sr, mixdown, 0
        # paths: a PathTable (one bytes buffer); num_samples: int64 (N,); no Python object per file.
        self.paths, self.num_samples, self.skipped = scan_table(source, scan, min_samples, target_sr, mixdown)
        if max_samples is not None:  # DPHuBERT keeps min_len <= length <= max_len (BucketizeBatchSampler)
            keep = self.num_samples <= max_samples
            self.skipped[TOO_LONG] = int((~keep).sum())
            if self.skipped[TOO_LONG]:
                log.info("skipped %d audio files longer than %d samples", self.skipped[TOO_LONG], max_samples)
                self.paths, self.num_samples = self.paths.take(np.flatnonzero(keep)), self.num_samples[keep]
        if not len(self.paths):
            raise ValueError(f"no usable audio in {source!r}: skipped {self.skipped}")
        self.lengths = np.minimum(self.num_samples, crop_samples)  # int64 (N,)
        self._bad: set[int] = set()  # items found unusable when read (shallow scans)
        # Files found unusable when read are also appended to `bad_log` (one "reason<TAB>path" line
        # each), which every DataLoader worker and DDP rank shares: `run_skipped()` counts them all.
        self.scan_skipped = dict(self.skipped)
        self.bad_log = None if bad_log is None else Path(bad_log)

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        """One line: files used, files skipped, and why (the training log's first data line)."""
        skipped = sum(self.skipped.values())
        why = ", ".join(f"{k}={v}" for k, v in self.skipped.items() if v) or "none"
        return f"audio: {len(self)} files used, {skipped} skipped ({why})"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        n = len(self.paths)
        for step in range(n):
            # A file that fails now is replaced by the next usable one, always the
            # same one, so the substitution is reproducible too.
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                wav = read_audio(self.paths[j], self.target_sr, mixdown=self.mixdown, min_samples=self.min_samples)
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
        if self.bad_log is not None:  # one short O_APPEND write: lines of several processes do not mix
            try:
                with open(self.bad_log, "a") as f:
                    f.write(f"{err.reason}\t{self.paths[j]}\n")
            except OSError as write_err:  # the warning above is the record then
                log.warning("could not record it in %s: %s", self.bad_log, write_err)

    def run_skipped(self) -> dict[str, int]:
        """Files skipped by the scan plus every file found unusable when read, by any process.

        Without `bad_log` this is `skipped` (this process only). A file found bad by
        several workers counts once.
        """
        if self.bad_log is None or not self.bad_log.is_file():
            return dict(self.skipped)
        counts = dict(self.scan_skipped)
        seen: set[str] = set()
        for line in self.bad_log.read_text(errors="replace").splitlines():
            reason, _, path = line.partition("\t")
            if path and path not in seen and reason in counts:
                seen.add(path)
                counts[reason] += 1
        return counts


def collate(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D waveforms -> (wav (B, T_max) float32 zero-padded at the end, lengths (B,) long)."""
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    for i, w in enumerate(batch):
        if w.dim() != 1:
            raise ValueError(f"batch item {i} has shape {tuple(w.shape)}, expected (T,)")
        if not bool(torch.isfinite(w).all()):  # read_audio never returns these: a bug or a foreign item
            raise ValueError(f"batch item {i} holds NaN/inf samples")
    lengths = torch.tensor([w.shape[0] for w in batch], dtype=torch.long)  # (B,)
    wav = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)  # (B, T_max)
    for i, w in enumerate(batch):
        wav[i, : w.shape[0]] = w
    return wav, lengths


class Keyed(Dataset):
    """`dataset[key]` with the key it was read under: (wav, index, epoch), what `CropToShortest` needs."""

    def __init__(self, dataset: AudioDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, epoch = key if isinstance(key, tuple) else (key, self.dataset.epoch)
        return self.dataset[(index, epoch)], index, epoch


class CropToShortest:
    """Collate `Keyed` items cropped to the batch's shortest: (wav (B, T_min), lengths all T_min), no padding.

    DPHuBERT (dataset/audio_dataset.py `CollateFnAudio(pad=False, rand_crop=True)`) crops every
    longer item at a random offset; here the offset is `crop_offset(seed, epoch, index, ..., stream=1)`,
    so a resumed run and every DataLoader worker crop the same item the same way.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, batch: Sequence[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(batch) == 0:
            raise ValueError("cannot collate an empty batch")
        shortest = min(int(wav.shape[-1]) for wav, _, _ in batch)
        cropped = []
        for wav, index, epoch in batch:
            start = crop_offset(self.seed, epoch, index, int(wav.shape[-1]), shortest, stream=1)
            cropped.append(wav[start : start + shortest])
        return collate(cropped)
