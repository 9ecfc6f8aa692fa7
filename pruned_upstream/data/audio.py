"""Reading and validating audio files.

Every problem with a file is an `AudioError` that names the file, a short
reason key (one of `REASONS`, used to count skipped files) and the detail.
Audio comes back as a float32 mono tensor at the target rate (16 kHz, what
WavLM was trained on).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from ..arch import SAMPLE_RATE

TARGET_SR = SAMPLE_RATE  # what the models take
# A file whose peak is below -60 dBFS holds no usable speech: 16-bit speech
# recordings peak tens of dB higher; 1e-3 is about 33 quantisation steps.
SILENCE_PEAK = 1e-3

UNREADABLE = "unreadable"  # missing, not audio, truncated, undecodable, or the read failed (permission, I/O)
EMPTY = "empty"  # a valid file with no samples
MULTICHANNEL = "multichannel"  # more than one channel and mixdown=False
WRONG_RATE = "wrong_rate"  # sample rate differs and resample=False
NONFINITE = "nonfinite"  # NaN or inf samples
SILENT = "silent"  # peak below the silence threshold (all zeros included)
TOO_SHORT = "too_short"  # fewer samples than asked for, after resampling
REASONS = (UNREADABLE, EMPTY, MULTICHANNEL, WRONG_RATE, NONFINITE, SILENT, TOO_SHORT)


class AudioError(ValueError):
    """A file that cannot be used as training audio; `reason` is a key of REASONS."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown audio error reason {reason!r}; expected one of {REASONS}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}: {detail}")


def resample_wav(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling along axis 0 (scipy's Kaiser-windowed FIR filter).

    wav: (T, ...) -> (ceil(T * target_sr / orig_sr), ...), same dtype.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return wav
    g = math.gcd(orig_sr, target_sr)
    out = resample_poly(wav, target_sr // g, orig_sr // g, axis=0)
    return out.astype(wav.dtype, copy=False)


def _wav_truncation(path: Path) -> str | None:
    """Describe a WAV file whose `data` chunk is cut short, else None.

    libsndfile reads a truncated WAV without complaint (it recomputes the frame
    count from the file size), so the header's declared size is checked here.
    Sizes 0 and 0xFFFFFFFF mean "unknown" (streamed writers) and pass.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not RIFF/WAVE: left to libsndfile
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                available = size - offset - 8
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    return f"truncated: data chunk declares {chunk_size} bytes, file holds {available}"
                return None
            offset += 8 + chunk_size + (chunk_size & 1)  # chunks are word-aligned
    return None


def _load(path: Path) -> tuple[np.ndarray, int]:
    """Decode a file to (T, C) float32 and its rate, or raise AudioError(unreadable).

    An operating-system error (permission denied, an I/O error on a network
    disk) is `unreadable` too, with the system's message as the detail.
    """
    try:
        if not path.is_file():
            raise AudioError(path, UNREADABLE, "no such file")
        if path.suffix.lower() == ".wav":
            truncated = _wav_truncation(path)
            if truncated:
                raise AudioError(path, UNREADABLE, truncated)
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(path, UNREADABLE, f"{type(err).__name__}: {err}") from err
    return data, sr


def _to_mono(path: Path, data: np.ndarray, mixdown: bool) -> np.ndarray:
    """(T, C) -> (T,); several channels are averaged only when asked."""
    channels = data.shape[1]
    if channels == 1:
        return data[:, 0]
    if not mixdown:
        raise AudioError(path, MULTICHANNEL, f"{channels} channels; pass mixdown=True to average them")
    return data.mean(axis=1)


def read_audio(
    path: str | os.PathLike,
    target_sr: int = TARGET_SR,
    resample: bool = True,
    mixdown: bool = False,
    min_samples: int = 0,
    silence_peak: float = SILENCE_PEAK,
) -> torch.Tensor:
    """Read one file as a mono float32 tensor (T,) at `target_sr`.

    Raises AudioError when the file is unreadable or truncated, empty,
    multi-channel (unless `mixdown`), at another rate (unless `resample`),
    holds NaN/inf, is silent (peak < `silence_peak`), or has fewer than
    `min_samples` samples after resampling.
    """
    path = Path(path)
    data, sr = _load(path)
    if data.shape[0] == 0:
        raise AudioError(path, EMPTY, "0 samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(path, NONFINITE, f"{bad} NaN/inf samples of {data.size}")
    if sr != target_sr and not resample:
        raise AudioError(path, WRONG_RATE, f"{sr} Hz, expected {target_sr} Hz (resample=False)")
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught just below
        wav = _to_mono(path, data, mixdown)
        wav = resample_wav(wav, sr, target_sr)
    if not np.isfinite(wav).all():  # float32 overflow of huge float samples when mixing or filtering
        raise AudioError(path, NONFINITE, "NaN/inf after down-mixing or resampling (samples near the float32 limit)")
    peak = float(np.abs(wav).max())
    if peak < silence_peak:
        raise AudioError(path, SILENT, f"peak {peak:.3g} < {silence_peak:.3g}")
    if wav.shape[0] < min_samples:
        raise AudioError(path, TOO_SHORT, f"{wav.shape[0]} samples < min_samples {min_samples}")
    return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))


def probe_audio(
    path: str | os.PathLike,
    target_sr: int = TARGET_SR,
    resample: bool = True,
    mixdown: bool = False,
    min_samples: int = 0,
) -> int:
    """The number of samples `read_audio` would return, from the header alone.

    Cheap (no decoding): catches unreadable, truncated WAV, empty,
    multi-channel, wrong-rate and too-short files, but not silent or NaN ones.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise AudioError(path, UNREADABLE, "no such file")
        if path.suffix.lower() == ".wav" and (truncated := _wav_truncation(path)):
            raise AudioError(path, UNREADABLE, truncated)
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(path, UNREADABLE, f"{type(err).__name__}: {err}") from err
    if info.frames == 0:
        raise AudioError(path, EMPTY, "0 samples")
    if info.channels != 1 and not mixdown:
        raise AudioError(path, MULTICHANNEL, f"{info.channels} channels; pass mixdown=True to average them")
    if info.samplerate != target_sr and not resample:
        raise AudioError(path, WRONG_RATE, f"{info.samplerate} Hz, expected {target_sr} Hz (resample=False)")
    num = math.ceil(info.frames * target_sr / info.samplerate)  # resample_poly's output length
    if num < min_samples:
        raise AudioError(path, TOO_SHORT, f"{num} samples < min_samples {min_samples}")
    return num


def check_audio(path: str | os.PathLike, **read_kwargs) -> str | None:
    """The reason key (one of REASONS) why `read_audio(path, **read_kwargs)` fails, or None."""
    try:
        read_audio(path, **read_kwargs)
    except AudioError as err:
        return err.reason
    return None


def write_wav(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sr: int = TARGET_SR) -> None:
    """Write mono audio (T,) in [-1, 1] as 16-bit PCM WAV (clipped, never wrapped)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"write_wav expects mono audio (T,), got shape {wav.shape}")
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sr, subtype="PCM_16")
