"""The embedded default corpus: synthetic speech from Debian's espeak-ng.

Keywords of Speech Commands v0.01 (the 10 classes of SUPERB's KS task), a
few other words (its `_unknown_` class), short sentences, and background
noise, spoken by "speakers" that are espeak-ng voice/variant/speed/pitch
combinations. Everything is 16 kHz mono 16-bit WAV and deterministic given
the seed. `write_speech_commands_layout` arranges it as s3prl 0.4.18's
`speech_commands` downstream reads it (see docs/data.md).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import TARGET_SR, write_wav
from .manifest import AudioEntry, write_manifest
from .speech import VOICES, Voice, find_espeak, speak_text

# s3prl downstream/speech_commands/dataset.py CLASSES, first ten.
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# Other words of Speech Commands v0.01 (Warden 2018): s3prl labels them `_unknown_`.
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "house", "tree")
SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "please turn the lights on in the kitchen",
    "we will meet at the station at nine",
    "the weather is cold and windy today",
    "open the window and let the air in",
    "she reads a book every evening",
    "a small boat crossed the quiet river",
    "the train leaves in ten minutes",
    "my brother plays the piano very well",
    "put the red box on the top shelf",
    "the children are singing in the garden",
    "can you tell me the way to the library",
    "he bought fresh bread at the market",
    "the meeting was moved to next week",
    "water boils at one hundred degrees",
    "the old clock on the wall stopped",
    "bring an umbrella because it may rain",
    "the cat slept all afternoon in the sun",
    "they painted the fence white last summer",
    "turn left after the second bridge",
)
SPEED_RANGE = (120, 190)  # words per minute (espeak-ng -s; its default is 175)
PITCH_RANGE = (25, 75)  # espeak-ng -p, 0..99 (default 50)
NOISE_SECONDS = 3.0  # s3prl crops 1 s windows from each background noise file
NOISE_FILES = ("white_noise", "brown_noise")

# Speech Commands' split rule (its README, and s3prl speech_commands/expert.py
# split_dataset): the sha1 of the speaker id, reduced mod 2**27, as a
# percentage: < 10 validation, < 20 testing, else training.
_MAX_PER_CLASS = 2**27 - 1
_SPLIT_BOUNDS = {"valid": (0.0, 10.0), "test": (10.0, 20.0), "train": (20.0, 100.1)}


@dataclass(frozen=True)
class Speaker:
    id: str  # 8 hex digits, like Speech Commands' hashed speaker ids
    voice: str  # espeak-ng -v
    speed: int  # espeak-ng -s
    pitch: int  # espeak-ng -p
    split: str  # train, valid or test


def hash_percentage(speaker_id: str) -> float:
    """Speech Commands' split percentage of a speaker id, in [0, 100]."""
    digest = int(hashlib.sha1(speaker_id.encode("utf-8")).hexdigest(), 16)
    return (digest % (_MAX_PER_CLASS + 1)) * (100.0 / _MAX_PER_CLASS)


def _speaker_id(voice: str, seed: int, split: str) -> str:
    """The first id derived from (voice, seed) whose hash lands in `split`."""
    lo, hi = _SPLIT_BOUNDS[split]
    for k in range(10_000):
        sid = hashlib.sha1(f"{voice}|{seed}|{k}".encode()).hexdigest()[:8]
        if lo <= hash_percentage(sid) < hi:
            return sid
    raise RuntimeError(f"no speaker id for voice {voice!r} lands in split {split!r}")


def _splits(n: int) -> list[str]:
    """The last voice is the test speaker, the one before it validation (n >= 3)."""
    tail = {1: [], 2: ["test"]}.get(n, ["valid", "test"])
    return ["train"] * (n - len(tail)) + tail


def make_speakers(voices: tuple[str, ...] = VOICES, seed: int = 0) -> list[Speaker]:
    rng = np.random.default_rng([seed, 1])
    speakers = []
    for voice, split in zip(voices, _splits(len(voices))):
        speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
        pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
        speakers.append(Speaker(_speaker_id(voice, seed, split), voice, speed, pitch, split))
    return speakers


def speak(text: str, speaker: Speaker, espeak: str) -> np.ndarray:
    """espeak-ng's rendering of `text` by `speaker`, as 16 kHz mono float32 (T,)."""
    return speak_text(text, Voice(speaker.voice, speaker.speed, speaker.pitch), espeak)


def _noise(kind: str, rng: np.random.Generator) -> np.ndarray:
    """NOISE_SECONDS of white or brown (integrated white) noise, peak 0.3."""
    x = rng.standard_normal(int(NOISE_SECONDS * TARGET_SR))
    if kind == "brown_noise":
        x = np.cumsum(x)
        x -= np.linspace(x[0], x[-1], x.size)  # remove the drift
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _items(n_words: int, n_unknown: int, n_sentences: int, speakers: list[Speaker], seed: int):
    """(kind, label, text, speaker) for every clip, in a fixed order."""
    if not 0 < n_words <= len(KEYWORDS):
        raise ValueError(f"n_words must be in 1..{len(KEYWORDS)}, got {n_words}")
    if n_unknown > len(UNKNOWN_WORDS) or n_sentences > len(SENTENCES):
        raise ValueError(f"at most {len(UNKNOWN_WORDS)} unknown words and {len(SENTENCES)} sentences, "
                         f"got {n_unknown} and {n_sentences}")
    for spk in speakers:
        yield from (("keyword", w, w, spk) for w in KEYWORDS[:n_words])
        yield from (("unknown", "_unknown_", w, spk) for w in UNKNOWN_WORDS[:n_unknown])
    who = np.random.default_rng([seed, 2]).integers(0, len(speakers), size=n_sentences)
    for i in range(n_sentences):
        yield "sentence", "", SENTENCES[i], speakers[int(who[i])]


def make_demo_corpus(
    out_dir: str | os.PathLike,
    n_words: int = len(KEYWORDS),
    voices: tuple[str, ...] = VOICES,
    n_unknown: int = 3,
    n_sentences: int = len(SENTENCES),
    seed: int = 0,
) -> Path:
    """Speak the corpus into `out_dir`; return its manifest (speech clips only).

    Writes `wavs/<speaker>/<kind>_<n>.wav`, `noise/<name>.wav`,
    `metadata.csv` (one row per file: path, kind, label, text, speaker, voice,
    speed, pitch, split, num_samples) and `manifest.tsv`.
    """
    espeak = find_espeak()
    out = Path(out_dir)
    speakers = make_speakers(tuple(voices), seed)
    items = list(_items(n_words, n_unknown, n_sentences, speakers, seed))
    with ThreadPoolExecutor(max_workers=2) as pool:  # espeak-ng runs in subprocesses
        wavs = pool.map(lambda item: speak(item[2], item[3], espeak), items)
        rows, entries = [], []
        for n, ((kind, label, text, spk), wav) in enumerate(zip(items, wavs)):
            path = out / "wavs" / spk.id / f"{kind}_{n:04d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_wav(path, wav)
            entries.append(AudioEntry(path, wav.shape[0]))
            rows.append(_row(out, path, kind, label, text, spk, wav.shape[0]))
    rng = np.random.default_rng([seed, 3])
    for name in NOISE_FILES:
        path = out / "noise" / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        wav = _noise(name, rng)
        write_wav(path, wav)
        rows.append(_row(out, path, "noise", "_silence_", "", None, wav.shape[0]))
    _write_metadata(out / "metadata.csv", rows)
    return write_manifest(out / "manifest.tsv", entries, root=out)


METADATA_FIELDS = (
    "path", "kind", "label", "text", "speaker", "voice", "speed", "pitch", "split", "num_samples",
)


def _row(out: Path, path: Path, kind, label, text, spk: Speaker | None, num: int) -> dict:
    spk_fields = asdict(spk) if spk else {"id": "", "voice": "", "speed": "", "pitch": "", "split": ""}
    return {"path": path.relative_to(out).as_posix(), "kind": kind, "label": label, "text": text,
            "speaker": spk_fields["id"], "voice": spk_fields["voice"], "speed": spk_fields["speed"],
            "pitch": spk_fields["pitch"], "split": spk_fields["split"], "num_samples": num}


def _write_metadata(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_metadata(corpus_dir: str | os.PathLike) -> list[dict]:
    with open(Path(corpus_dir) / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- s3prl layout

TRAIN_DIR = "speech_commands_v0.01"  # names of the official archives' folders
TEST_DIR = "speech_commands_test_set_v0.01"
NOISE_DIR = "_background_noise_"


def split_of(speaker_id: str) -> str:
    pct = hash_percentage(speaker_id)
    return next(s for s, (lo, hi) in _SPLIT_BOUNDS.items() if lo <= pct < hi)


def write_speech_commands_layout(
    corpus_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> dict[str, Path]:
    """Arrange the corpus's word clips as the two Speech Commands v0.01 folders.

    Train root: `<word>/<speaker>_nohash_0.wav` for every word clip (s3prl
    splits it by the speaker hash: validation < 10 %, testing 10-20 %,
    discarded), `_background_noise_/*.wav`, `validation_list.txt`,
    `testing_list.txt`. Test root: `<keyword>/`, `_unknown_/`, `_silence_/`
    (1 s noise cuts) with the test speakers' clips. Returns the two paths
    under the keys of s3prl's speech_commands `datarc`.
    """
    corpus, out = Path(corpus_dir), Path(out_dir)
    train_root, test_root = out / TRAIN_DIR, out / TEST_DIR
    for root in (train_root, test_root):
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not empty; remove it or choose another out_dir")
    lists: dict[str, list[str]] = {"valid": [], "test": []}
    for row in read_metadata(corpus):
        if row["kind"] in ("keyword", "unknown"):
            _place_word(row, corpus, train_root, test_root, lists)
        elif row["kind"] == "noise":
            _place_noise(row, corpus, train_root, test_root)
    train_root.mkdir(parents=True, exist_ok=True)
    (train_root / "validation_list.txt").write_text("".join(f"{p}\n" for p in lists["valid"]))
    (train_root / "testing_list.txt").write_text("".join(f"{p}\n" for p in lists["test"]))
    return {"speech_commands_root": train_root, "speech_commands_test_root": test_root}


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _place_word(row: dict, corpus: Path, train_root: Path, test_root: Path, lists: dict) -> None:
    word, speaker = row["text"], row["speaker"]
    if split_of(speaker) != row["split"]:
        raise ValueError(
            f"speaker {speaker} hashes to {split_of(speaker)!r} but metadata says {row['split']!r}"
        )
    name = f"{speaker}_nohash_0.wav"  # one clip per (speaker, word)
    _copy(corpus / row["path"], train_root / word / name)
    if row["split"] in lists:
        lists[row["split"]].append(f"{word}/{name}")
    if row["split"] == "test":
        # The test folder is read by class name: other words go to _unknown_.
        label_dir = word if row["kind"] == "keyword" else "_unknown_"
        k = 0 if row["kind"] == "keyword" else UNKNOWN_WORDS.index(word)
        _copy(corpus / row["path"], test_root / label_dir / f"{speaker}_nohash_{k}.wav")


def _place_noise(row: dict, corpus: Path, train_root: Path, test_root: Path) -> None:
    src = corpus / row["path"]
    _copy(src, train_root / NOISE_DIR / src.name)
    wav, sr = sf.read(str(src), dtype="float32")  # (T,)
    (test_root / "_silence_").mkdir(parents=True, exist_ok=True)
    for k in range(wav.shape[0] // sr):  # s3prl's test set reads whole files: cut 1 s clips
        write_wav(test_root / "_silence_" / f"{src.stem}_{k}.wav", wav[k * sr : (k + 1) * sr], sr)
