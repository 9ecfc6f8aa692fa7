"""Speech from Debian's espeak-ng: words and sentences with known text, voices as speakers.

    wav = speak_text("turn left", Voice("en-us+m3", speed=150, pitch=40))   # 16 kHz float32 (T,)
    ipa = phonemes("turn left", "en-us")                                   # espeak-ng's phonemes

espeak-ng writes 22050 Hz mono audio (measured, docs/environment.md); it is
resampled to 16 kHz. Voices (en-us, en-gb, en-gb-scotland, ...) with variants
(+m1..+m7, +f1..+f5), speed (-s, words per minute) and pitch (-p, 0..99) give
many distinct "speakers" whose labels match the audio.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .audio import TARGET_SR, resample_wav

ESPEAK = "espeak-ng"
ESPEAK_SR = 22050  # espeak-ng's output rate (measured: docs/environment.md)
# espeak-ng voices with variants (+m1..+m7, +f1..+f5): one "speaker" each.
VOICES = (
    "en-us+m3", "en-us+f2", "en-gb+m1", "en-gb+f4",
    "en-gb-scotland+m5", "en-029+f1", "en-gb-x-rp+m7", "en-us+f5",
)


class EspeakNotFoundError(RuntimeError):
    pass


@dataclass(frozen=True)
class Voice:
    voice: str  # espeak-ng -v, e.g. "en-us+m3"
    speed: int = 175  # espeak-ng -s, words per minute (its default)
    pitch: int = 50  # espeak-ng -p, 0..99 (its default)


def find_espeak(name: str = ESPEAK) -> str:
    path = shutil.which(name)
    if path is None:
        raise EspeakNotFoundError(
            f"{name} was not found on PATH ({os.environ.get('PATH', '')}); the synthetic corpora are "
            f"spoken by it: install it with `apt-get install espeak-ng` (Debian/Ubuntu)"
        )
    return path


def speak_text(text: str, voice: Voice, espeak: str | None = None) -> np.ndarray:
    """espeak-ng's rendering of `text` in `voice`, as 16 kHz mono float32 (T,)."""
    espeak = espeak or find_espeak()
    cmd = [espeak, "--stdout", "-v", voice.voice, "-s", str(voice.speed), "-p", str(voice.pitch), text]
    proc = subprocess.run(cmd, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")  # (T,)
    if sr != ESPEAK_SR:
        raise RuntimeError(f"{espeak} wrote {sr} Hz audio, expected {ESPEAK_SR} Hz")
    return resample_wav(wav, sr, TARGET_SR)


def phonemes(text: str, voice: str = "en-us", espeak: str | None = None) -> str:
    """espeak-ng's IPA phonemes of `text` (-q -x --ipa), words separated by spaces."""
    espeak = espeak or find_espeak()
    cmd = [espeak, "-q", "--ipa", "-v", voice, text]
    proc = subprocess.run(cmd, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return " ".join(proc.stdout.decode().split())
