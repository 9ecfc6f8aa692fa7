"""A small Fluent Speech Commands for SUPERB IC, spoken by espeak-ng, in the real layout.

The real corpus (fluent.ai's ``fluent_speech_commands_dataset``; s3prl
``downstream/docs/superb.md``, "IC") as s3prl 0.4.18 reads it
(``fluent_commands/expert.py`` ``get_dataset``, ``dataset.py``)::

    <root>/data/{train,valid,test}_data.csv    ",path,speakerId,transcription,action,object,location"
    <root>/wavs/speakers/<speakerId>/<uuid>.wav  16 kHz mono 16-bit WAV

The CSVs start with pandas' unnamed index column; ``path`` is relative to
``<root>``. An intent is the triple (action, object, location), ``none`` for
an empty slot; s3prl numbers each slot's values in the order they first occur
in ``train_data.csv``, so every value of valid and test must occur in train.
The splits have disjoint speakers (77 / 10 / 10 in the real corpus); speaker
ids are 16 letters and digits, file names uuid1-style.

Here: ten of the real corpus's 31 intents, each with two phrasings written in
the style of its prompts; train speakers say both phrasings of every intent,
the valid and test speaker one each (alternating). Speakers are espeak-ng
voices, each with its own pitch and a speed drawn from ``seed``. No torch import.
"""

from __future__ import annotations

import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
DATASET_DIR = "fluent_speech_commands_dataset"  # the real archive's top folder
COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")
SPLITS = ("train", "valid", "test")
ID_CHARS = string.ascii_letters + string.digits

# (action, object, location, phrasings): intents of the real corpus (its value spellings).
INTENTS = (
    ("activate", "lights", "none", ("Turn on the lights", "Switch on the lights")),
    ("deactivate", "lights", "none", ("Turn off the lights", "Switch the lights off")),
    ("activate", "lights", "kitchen", ("Turn on the kitchen lights", "Lights on in the kitchen")),
    ("deactivate", "lights", "bedroom", ("Turn off the bedroom lights", "Bedroom lights off")),
    ("increase", "volume", "none", ("Turn up the volume", "Increase the volume")),
    ("decrease", "volume", "none", ("Turn down the volume", "Make it quieter")),
    ("increase", "heat", "washroom", ("Turn the heat up in the washroom", "Washroom heat up")),
    ("bring", "newspaper", "none", ("Bring me the newspaper", "Get me the newspaper")),
    ("activate", "music", "none", ("Play the music", "Put on some music")),
    ("change language", "Chinese", "none", ("Switch the language to Chinese", "Use Chinese")),
)
# split -> (espeak-ng voice, pitch); disjoint voices per split.
SPEAKERS = {
    "train": (("en-us+m3", 40), ("en-us+f2", 62), ("en-gb+m1", 35)),
    "valid": (("en-gb-x-rp+m7", 45),),
    "test": (("en-029+f1", 66),),
}


@dataclass(frozen=True)
class Utterance:
    rel: str  # wavs/speakers/<speakerId>/<uuid>.wav
    speaker: str
    split: str
    text: str
    intent: tuple[str, str, str]


@dataclass(frozen=True)
class SmallFluentCommands:
    root: Path  # $FLUENT_COMMANDS_ROOT (datarc.file_path)
    utterances: tuple[Utterance, ...] = ()

    def split(self, name: str) -> list[Utterance]:
        return [u for u in self.utterances if u.split == name]


def _speaker_id(rng: np.random.Generator) -> str:
    return "".join(ID_CHARS[int(i)] for i in rng.integers(len(ID_CHARS), size=16))


def _uuid1_like(rng: np.random.Generator) -> str:
    """A uuid1-shaped name (the real files are ``uuid1()``: time fields, then a fixed node)."""
    h = "".join(f"{int(b):02x}" for b in rng.integers(256, size=16))
    return f"{h[:8]}-{h[8:12]}-11e9-{h[16:20]}-{h[20:32]}"


def plan(seed: int = 0) -> list[tuple[Utterance, tuple[str, int, int]]]:
    """Every utterance with the (voice, speed, pitch) that speaks it, in CSV order."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for split in SPLITS:
        for s, (voice, pitch) in enumerate(SPEAKERS[split]):
            speaker, speed = _speaker_id(rng), int(rng.integers(140, 190))
            for i, (action, obj, location, phrasings) in enumerate(INTENTS):
                said = phrasings if split == "train" else (phrasings[(i + s) % len(phrasings)],)
                for text in said:
                    rel = f"wavs/speakers/{speaker}/{_uuid1_like(rng)}.wav"
                    out.append((Utterance(rel, speaker, split, text, (action, obj, location)), (voice, speed, pitch)))
    return out


def _csv_field(value: str) -> str:
    return f'"{value}"' if "," in value else value


def write_split_csv(path: Path, utterances: list[Utterance]) -> Path:
    """``data/<split>_data.csv`` with the real header (pandas index column first)."""
    lines = ["," + ",".join(COLUMNS)]
    for n, u in enumerate(utterances):
        fields = (u.rel, u.speaker, u.text, *u.intent)
        lines.append(f"{n}," + ",".join(_csv_field(f) for f in fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def layout(root: str | Path) -> SmallFluentCommands:
    """Where :func:`make_fluent_commands` writes under ``root``."""
    return SmallFluentCommands(Path(root) / DATASET_DIR)


def make_fluent_commands(root: str | Path, seed: int = 0) -> SmallFluentCommands:
    """Write ``root/fluent_speech_commands_dataset`` (wavs and the three CSVs); deterministic given ``seed``."""
    import soundfile as sf

    from pruned_upstream.data.speech import Voice, find_espeak, speak_text

    data_root = layout(root).root
    espeak, items = find_espeak(), plan(seed)

    def render(item) -> np.ndarray:
        utt, (voice, speed, pitch) = item
        return speak_text(utt.text.lower(), Voice(voice, speed=speed, pitch=pitch), espeak)

    with ThreadPoolExecutor(max_workers=2) as pool:  # espeak-ng runs in subprocesses
        for (utt, _), wav in zip(items, pool.map(render, items)):
            path = data_root / utt.rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    utterances = tuple(utt for utt, _ in items)
    for split in SPLITS:
        write_split_csv(data_root / "data" / f"{split}_data.csv", [u for u in utterances if u.split == split])
    return SmallFluentCommands(data_root, utterances)
