"""A small Audio SNIPS spoken by espeak-ng, in s3prl's preprocessed layout, for SUPERB SF.

s3prl's SNIPS (the archive linked from s3prl's ``downstream/docs/superb.md``,
made by ``s3prl/preprocess/snips_prepare_data.sh`` and ``snips_preprocess.py``)::

    SNIPS/{train,valid,test}/<Speaker>-snips-<split>-<n>.wav   16 kHz mono 16-bit WAV (Amazon Polly voices)
    SNIPS/all.iob.snips.txt   "<Speaker>-snips-<split>-<n> BOS <UPPER TEXT> EOS\\tO <slot per word> <intent>"
    SNIPS/slots.txt           slot names by falling frequency, "O" first, "\\n"-joined (no final newline)

Slot tags are slot names without B-/I- prefixes (``O`` outside a slot);
``<n>`` is the sentence number, shared by all speakers of a split.

Who reads it (s3prl 0.4.18, commit ec8064b5): ``s3prl/downstream/ctc/corpus/snips.py``
(``rglob("*.wav")`` under ``<path>/<split>``, keeps files whose stem is a line
id of ``all.iob.snips.txt`` and starts with a speaker of ``<split>_speakers``)
and ``s3prl/downstream/ctc/text.py`` ``CharacterTextSlotEncoder`` (drops BOS/EOS
and the first tag and the intent, wraps each slot value in ``B-<slot>`` ...
``E-<slot>`` tokens; ``slots.txt``'s first line is skipped: it must be ``O``).
Characters must be in ``downstream/ctc/vocab/character.txt`` (space, A-Z, ').

Small data here: five of SNIPS's seven intents with a few of its slot names,
filled from templates; speakers are espeak-ng voices named after the Polly
voices of s3prl's ``snips.yaml`` speaker lists, so the config needs no speaker
override. ``all-trans.txt`` (plain text, only read in non-slot modes) is not written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
SPLITS = ("train", "valid", "test")

# Polly voice names of s3prl's snips.yaml lists -> espeak-ng voice, speed, pitch. Train has all 8 of
# the config's train voices (with 4, a tiny model learned train but never a dev slot in 600 steps).
SPEAKERS: dict[str, dict[str, tuple[str, int, int]]] = {
    "train": {"Ivy": ("en-us+f2", 165, 60), "Joanna": ("en-us+f5", 160, 50),
              "Joey": ("en-us+m3", 160, 40), "Justin": ("en-gb+m1", 170, 45),
              "Kendra": ("en-us+f3", 155, 65), "Kimberly": ("en-gb+f1", 170, 55),
              "Matthew": ("en-gb-x-gbclan+m2", 160, 35), "Salli": ("en-us+f4", 165, 50)},
    "valid": {"Aditi": ("en-029+f1", 160, 55)},
    "test": {"Brian": ("en-gb-x-rp+m7", 155, 40), "Emma": ("en-gb+f4", 165, 55)},
}

# (intent, template); {slot} is filled from FILLERS[slot].
TEMPLATES = (
    ("GetWeather", "WHAT IS THE WEATHER IN {city} {timeRange}"),
    ("GetWeather", "WILL IT RAIN IN {city}"),
    ("PlayMusic", "PLAY SOME {artist} ON {service}"),
    ("PlayMusic", "PLAY A SONG BY {artist}"),
    ("AddToPlaylist", "ADD THIS SONG TO MY {playlist} PLAYLIST"),
    ("BookRestaurant", "BOOK A TABLE FOR {party_size_number} IN {city}"),
    ("RateBook", "RATE THIS BOOK {rating_value} STARS"),
)
FILLERS = {
    "city": ("BOSTON", "PARIS", "NEW YORK", "LONDON"),
    "timeRange": ("TOMORROW", "TONIGHT", "NEXT WEEK"),
    "artist": ("MADONNA", "THE BEATLES", "ELVIS"),
    "service": ("SPOTIFY", "YOUTUBE"),
    "playlist": ("SUMMER", "ROCK CLASSICS", "WORKOUT"),
    "party_size_number": ("TWO", "FOUR", "SIX"),
    "rating_value": ("ONE", "THREE", "FIVE"),
}


@dataclass(frozen=True)
class Sentence:
    intent: str
    words: tuple[str, ...]
    tags: tuple[str, ...]  # slot name or "O" per word

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def iob_line(self, utt_id: str) -> str:
        """A line of ``all.iob.snips.txt``."""
        return f"{utt_id} BOS {self.text} EOS\tO {' '.join(self.tags)} {self.intent}\n"

    def slot_values(self) -> list[tuple[str, str]]:
        """(slot, value) pairs in order, consecutive equal tags joined (as s3prl's encoder does)."""
        out: list[tuple[str, str]] = []
        for i, (word, tag) in enumerate(zip(self.words, self.tags)):
            if tag == "O":
                continue
            if i > 0 and self.tags[i - 1] == tag:
                out[-1] = (tag, out[-1][1] + " " + word)
            else:
                out.append((tag, word))
        return out


def fill(intent: str, template: str, rng: np.random.Generator) -> Sentence:
    """One sentence from a template, each ``{slot}`` filled by a random value."""
    words, tags = [], []
    for token in template.split():
        if token.startswith("{"):
            slot = token[1:-1]
            value = FILLERS[slot][int(rng.integers(len(FILLERS[slot])))]
            words += value.split()
            tags += [slot] * len(value.split())
        else:
            words.append(token)
            tags.append("O")
    return Sentence(intent, tuple(words), tuple(tags))


def sentences(split: str, count: int, seed: int) -> list[Sentence]:
    """``count`` sentences of a split, cycling through the templates (every intent in every split)."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return [fill(*TEMPLATES[(k + SPLITS.index(split)) % len(TEMPLATES)], rng) for k in range(count)]


def write_slots(path: Path, all_sentences: list[Sentence]) -> Path:
    """``slots.txt``: every tag by falling count (ties: first seen), ``O`` first as s3prl expects."""
    counts: dict[str, int] = {}
    for sentence in all_sentences:
        for tag in sentence.tags:
            counts[tag] = counts.get(tag, 0) + 1
    ordered = sorted(counts, key=lambda tag: -counts[tag])
    if ordered[0] != "O":
        raise ValueError(f"'O' must be the most frequent tag (s3prl skips slots.txt's first line): {counts}")
    path.write_text("\n".join(ordered))
    return path


@dataclass(frozen=True)
class SmallSnips:
    """Where :func:`build_snips` wrote things."""

    root: Path  # corpus.path
    slots_file: Path  # text.slots_file
    lines: dict[str, Sentence]  # utterance id -> sentence

    def split_ids(self, split: str) -> list[str]:
        return sorted(utt for utt in self.lines if utt.split("-")[2] == split)


def build_snips(out: str | os.PathLike, per_split: dict[str, int] | None = None, seed: int = 0) -> SmallSnips:
    """Write ``out/SNIPS`` (wav folders, ``all.iob.snips.txt``, ``slots.txt``); deterministic given ``seed``.

    ``per_split``: sentences per split (each spoken by every speaker of the split).
    """
    import soundfile as sf

    from pruned_upstream.data.speech import Voice, speak_text

    per_split = per_split or {"train": 7, "valid": 3, "test": 3}
    root = Path(out) / "SNIPS"
    lines: dict[str, Sentence] = {}
    for split, count in per_split.items():  # lines speaker by speaker, as create_multispk_for_snips writes them
        (root / split).mkdir(parents=True, exist_ok=True)
        split_sentences = sentences(split, count, seed)
        for speaker, (voice, speed, pitch) in SPEAKERS[split].items():
            for n, sentence in enumerate(split_sentences):
                utt_id = f"{speaker}-snips-{split}-{n}"
                wav = speak_text(sentence.text.lower(), Voice(voice, speed=speed, pitch=pitch))
                sf.write(str(root / split / f"{utt_id}.wav"), np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
                lines[utt_id] = sentence
    (root / "all.iob.snips.txt").write_text("".join(s.iob_line(utt) for utt, s in lines.items()))
    slots = write_slots(root / "slots.txt", list(lines.values()))
    return SmallSnips(root, slots, lines)
