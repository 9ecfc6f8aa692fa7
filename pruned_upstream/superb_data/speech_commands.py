"""A small Speech Commands v0.01 for SUPERB KS, spoken by espeak-ng, in the two real folders.

The real data (s3prl ``downstream/docs/superb.md``, "KS"): the unpacked
``speech_commands_v0.01.tar.gz`` (train root: ``<word>/<speaker>_nohash_<n>.wav``,
``_background_noise_/*.wav``, ``validation_list.txt``, ``testing_list.txt``) and
``speech_commands_test_set_v0.01.tar.gz`` (test root: ``<class>/*.wav`` for the
ten keywords, ``_unknown_`` and ``_silence_``). s3prl 0.4.18's
``speech_commands/expert.py`` ``split_dataset`` splits the train root by the
SHA-1 of the speaker id (below 10 %: dev; 10-20 %: dropped; the rest: train)
and ignores the two list files.

Here the words, speakers and layout come from the demo corpus
(``pruned_upstream/data/demo_corpus.py``): each speaker is an espeak-ng voice
with its own speed and pitch whose 8-hex-digit id hashes into its split
(train, train, ..., dev, test for the voices given), saying the ten keywords
and ``n_unknown`` other Speech Commands words; two 3 s background noises feed
``_silence_`` (cut into 1 s clips for the test root). No torch import.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pruned_upstream.data.demo_corpus import TEST_DIR, TRAIN_DIR, make_demo_corpus, write_speech_commands_layout

# Two train speakers, one dev, one test (demo_corpus._splits: the last voice tests, the one before it validates).
VOICES = ("en-us+m3", "en-gb+f4", "en-gb-scotland+m5", "en-us+f2")


@dataclass(frozen=True)
class SmallSpeechCommands:
    train_root: Path  # $SPEECH_COMMANDS_ROOT (datarc.speech_commands_root)
    test_root: Path  # $SPEECH_COMMANDS_TEST_ROOT (datarc.speech_commands_test_root)


def layout(root: str | Path) -> SmallSpeechCommands:
    """Where :func:`make_speech_commands` writes under ``root`` (the real archives' folder names)."""
    root = Path(root)
    return SmallSpeechCommands(root / TRAIN_DIR, root / TEST_DIR)


def make_speech_commands(root: str | Path, voices: tuple[str, ...] = VOICES, n_unknown: int = 3,
                         seed: int = 0) -> SmallSpeechCommands:
    """Write ``root/speech_commands_v0.01`` and ``root/speech_commands_test_set_v0.01``; deterministic.

    ``voices``: at least three (train ..., dev, test). The spoken clips are
    built in ``root/corpus`` and copied into the layout; that folder is removed.
    """
    if len(voices) < 3:
        raise ValueError(f"need at least 3 voices (train, dev, test), got {len(voices)}")
    root = Path(root)
    corpus = root / "corpus"
    make_demo_corpus(corpus, voices=tuple(voices), n_unknown=n_unknown, n_sentences=0, seed=seed)
    write_speech_commands_layout(corpus, root)
    shutil.rmtree(corpus)
    return layout(root)
