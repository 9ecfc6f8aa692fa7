"""A small VoxCeleb1 in the real layout, spoken by espeak-ng (one voice = one speaker).

The real corpus (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html), as
s3prl 0.4.18 reads it (commit ec8064b5):

* ``<root>/dev/wav/<idNNNNN>/<youtube id>/<nnnnn>.wav`` (1211 speakers) and
  ``<root>/test/wav/...`` (the 40 speakers id10270 .. id10309), 16 kHz mono
  16-bit WAV; ``nnnnn`` counts the segments of one video from 00001.
* SID (``s3prl/downstream/voxceleb1/dataset.py``) reads a split list, the
  config's ``meta_data`` (s3prl's ``downstream/voxceleb1/veri_test_class.txt``,
  VGG's ``iden_split.txt``): one line ``<1|2|3> <id>/<youtube id>/<nnnnn>.wav``
  per utterance, 1 = train, 2 = dev, 3 = test, over the speakers of both
  ``dev/wav`` and ``test/wav`` (it globs ``<root>/*/wav/<path>``). The label is
  ``int(id[2:]) - 10001`` with 1251 classes, so ids must lie in
  id10001 .. id11251.
* ASV (``s3prl/downstream/sv_voxceleb1/{expert,dataset}.py``) trains on every
  audio file under ``dev/wav`` (speakers = its sub-directories; utterances
  shorter than ``vad_config.min_sec`` samples after sox's silence trimming are
  dropped) and tests on a trial list, the config's ``test_meta_data`` (s3prl's
  ``voxceleb1_test_v2.txt``, VGG's ``veri_test2.txt``): lines
  ``<1|0> <enrol> <test>``, paths relative to ``test/wav``, 1 = same speaker.

Here: a few speakers with ids in the real ranges (dev from id10001, test from
id10270), each an espeak-ng voice and variant at its own pitch, a few
"videos" per speaker (speed and a faint noise floor differ per video) and
Harvard sentences as utterances (at least ``MIN_SECONDS`` long, so that s3prl's
2 s ASV filter keeps them all). ``iden_split.txt`` and ``veri_test2.txt`` are
written into ``<root>`` (VGG distributes them beside the audio); pass them with
``-o config.downstream_expert.datarc.meta_data=<root>/iden_split.txt`` (SID) and
``-o config.downstream_expert.datarc.test_meta_data=<root>/veri_test2.txt`` (ASV).
Per speaker, the first ``train_videos`` videos are SID train (1), the next
dev (2), the last test (3).
"""

from __future__ import annotations

import itertools
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
MIN_SECONDS = 2.4  # > s3prl's ASV min_sec of 32000 samples (2 s)
IDEN_SPLIT = "iden_split.txt"
VERI_TRIALS = "veri_test2.txt"
SID_SPLITS = {1: "train", 2: "dev", 3: "test"}
YOUTUBE_CHARS = string.ascii_letters + string.digits + "-_"
# Harvard sentences (IEEE 1969 recommended practice for speech quality measurements), lists 1-3.
SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
)


@dataclass(frozen=True)
class Speaker:
    """One VoxCeleb1 identity: its id, the espeak-ng voice and pitch that speak it, its set."""

    id: str
    voice: str  # espeak-ng -v
    pitch: int  # espeak-ng -p
    set: str  # "dev" or "test": the directory its audio lives in


# Dev speakers from id10001, test speakers from id10270 (the real test set's first id).
DEV_SPEAKERS = (
    Speaker("id10001", "en-us+m3", 40, "dev"), Speaker("id10002", "en-gb+f4", 62, "dev"),
    Speaker("id10003", "en-gb-scotland+m5", 30, "dev"), Speaker("id10004", "en-029+f1", 75, "dev"),
    Speaker("id10005", "en-gb-x-rp+m7", 48, "dev"), Speaker("id10006", "en-us+f2", 55, "dev"),
    Speaker("id10007", "en-gb-x-gbclan+m2", 36, "dev"), Speaker("id10008", "en-us+f5", 85, "dev"),
)
TEST_SPEAKERS = (
    Speaker("id10270", "en-gb+m1", 25, "test"), Speaker("id10271", "en-us+f3", 70, "test"),
    Speaker("id10272", "en-gb-x-gbcwmd+m4", 52, "test"), Speaker("id10273", "en-gb-scotland+f2", 60, "test"),
)


@dataclass(frozen=True)
class Utterance:
    rel: str  # <id>/<youtube id>/<nnnnn>.wav, relative to <root>/<set>/wav
    speaker: str
    set: str  # "dev" or "test" directory
    sid_split: int  # 1 train, 2 dev, 3 test (iden_split.txt)
    text: str
    seconds: float


@dataclass
class VoxCeleb1Small:
    """What :func:`make_voxceleb1` wrote."""

    root: Path
    iden_split: Path
    trials: Path
    speakers: tuple[Speaker, ...]
    utterances: list[Utterance] = field(default_factory=list)

    def split(self, sid_split: int) -> list[Utterance]:
        return [u for u in self.utterances if u.sid_split == sid_split]

    def path(self, utt: Utterance) -> Path:
        return self.root / utt.set / "wav" / utt.rel


def youtube_id(rng: random.Random) -> str:
    """An 11-character id in YouTube's alphabet (the real video folder names)."""
    return "".join(rng.choice(YOUTUBE_CHARS) for _ in range(11))


def render(text: str, speaker: Speaker, speed: int, noise: float, rng: random.Random) -> np.ndarray:
    """``text`` in the speaker's voice over a faint noise floor, at least MIN_SECONDS long."""
    from pruned_upstream.data.speech import Voice, speak_text

    voice = Voice(speaker.voice, speed=speed, pitch=speaker.pitch)
    wav = speak_text(text, voice)
    while len(wav) < MIN_SECONDS * SAMPLE_RATE:  # too short: add another sentence
        wav = np.concatenate([wav, speak_text(rng.choice(SENTENCES), voice)])
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    wav = 0.8 * wav / max(float(np.abs(wav).max()), 1e-6)
    return (wav + noise * noise_rng.standard_normal(len(wav))).astype(np.float32)


def write_wav16(path: Path, wav: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")


def speaker_utterances(root: Path, speaker: Speaker, train_videos: int, per_video: int,
                       rng: random.Random) -> list[Utterance]:
    """Write one speaker's videos: ``train_videos`` SID-train videos, one dev, one test."""
    utterances = []
    splits = [1] * train_videos + [2, 3]
    for video, sid_split in enumerate(splits):
        yt, speed, noise = youtube_id(rng), rng.randint(145, 185), rng.uniform(0.002, 0.006)
        for n in range(1, per_video + 1):
            text = rng.choice(SENTENCES)
            wav = render(text, speaker, speed, noise, rng)
            rel = f"{speaker.id}/{yt}/{n:05d}.wav"
            write_wav16(root / speaker.set / "wav" / rel, wav)
            utterances.append(Utterance(rel, speaker.id, speaker.set, sid_split, text, len(wav) / SAMPLE_RATE))
    return utterances


def write_iden_split(path: Path, utterances: list[Utterance]) -> Path:
    """VGG's ``iden_split.txt`` format: ``<1|2|3> <id>/<youtube id>/<nnnnn>.wav``."""
    path.write_text("".join(f"{u.sid_split} {u.rel}\n" for u in utterances))
    return path


def trial_pairs(utterances: list[Utterance], rng: random.Random) -> list[tuple[int, str, str]]:
    """Every same-speaker pair and as many different-speaker pairs, drawn with ``rng``."""
    pairs = list(itertools.combinations(utterances, 2))
    same = [(1, a.rel, b.rel) for a, b in pairs if a.speaker == b.speaker]
    different = [(0, a.rel, b.rel) for a, b in pairs if a.speaker != b.speaker]
    chosen = rng.sample(different, min(len(same), len(different)))
    trials = same + chosen
    rng.shuffle(trials)
    return trials


def write_trials(path: Path, trials: list[tuple[int, str, str]]) -> Path:
    """VGG's ``veri_test2.txt`` format: ``<1|0> <enrol> <test>``, relative to ``test/wav``."""
    path.write_text("".join(f"{label} {a} {b}\n" for label, a, b in trials))
    return path


def make_voxceleb1(root: str | Path, *, n_dev: int = 6, n_test: int = 4, train_videos: int = 2,
                   per_video: int = 2, seed: int = 0) -> VoxCeleb1Small:
    """Write a small VoxCeleb1 under ``root``: dev/wav, test/wav, iden_split.txt, veri_test2.txt.

    ``n_dev`` (<= 8) speakers under ``dev/wav``, ``n_test`` (<= 4) under
    ``test/wav``; each speaks ``train_videos + 2`` videos of ``per_video``
    utterances. Deterministic given ``seed``.
    """
    if not (1 <= n_dev <= len(DEV_SPEAKERS) and 2 <= n_test <= len(TEST_SPEAKERS)):
        raise ValueError(f"n_dev must be 1..{len(DEV_SPEAKERS)} and n_test 2..{len(TEST_SPEAKERS)}")
    root = Path(root)
    rng = random.Random(seed)
    speakers = DEV_SPEAKERS[:n_dev] + TEST_SPEAKERS[:n_test]
    data = VoxCeleb1Small(root, root / IDEN_SPLIT, root / VERI_TRIALS, speakers)
    for speaker in speakers:
        data.utterances += speaker_utterances(root, speaker, train_videos, per_video, rng)
    write_iden_split(data.iden_split, data.utterances)
    write_trials(data.trials, trial_pairs([u for u in data.utterances if u.set == "test"], rng))
    return data


def sid_label(speaker_id: str) -> int:
    """s3prl's SID class of a speaker id (``voxceleb1/dataset.py`` ``build_label``)."""
    return int(speaker_id[2:]) - 10001
