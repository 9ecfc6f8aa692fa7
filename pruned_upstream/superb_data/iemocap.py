"""A small IEMOCAP in the real layout: emotions acted by espeak-ng's pitch, rate and loudness.

The real corpus (IEMOCAP_full_release, https://sail.usc.edu/iemocap/, licence
form) as s3prl 0.4.18 reads it (commit ec8064b5):

* ``<root>/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav``: 16 kHz mono
  16-bit WAV, one per turn; dialogs ``Ses0KF_impro0N`` / ``Ses0KM_script0N_M``,
  turns ``<dialog>_F000`` / ``<dialog>_M000`` (numbered per speaker). Session K
  has two actors, ``Ses0KF`` and ``Ses0KM``.
* ``<root>/SessionK/dialog/EmoEvaluation/<dialog>.txt``: a header line, then per
  turn a block starting ``[START - END]<TAB><turn><TAB><emotion><TAB>[V, A, D]``
  followed by the evaluators' lines (``C-E2:<TAB>Neutral;<TAB>()``, ...). The
  emotion is the majority label (``neu hap ang sad exc fru sur fea dis oth xxx``;
  ``xxx``: no majority). The directory also holds ``Categorical/``,
  ``Attribute/``, ``Self-evaluation/`` sub-directories.
* ``s3prl/downstream/emotion/IEMOCAP_preprocess.py <root>`` reads those (only
  lines starting with ``[``, emotions neu/hap/ang/sad/exc, ``exc`` merged into
  ``hap``) and writes ``<root>/meta_data/SessionK/{train,test}_meta_data.json``
  (test = session K, train = the other four): ``{"labels": {"neu": 0, "hap":
  1, "ang": 2, "sad": 3}, "meta_data": [{"path": "SessionK/sentences/wav/..",
  "label": .., "speaker": "Ses0KF"}, ..]}``. s3prl ships these JSONs for the
  real corpus in ``downstream/emotion/meta_data``; ``emotion/expert.py`` reads
  ``<meta_data>/Session<K>/{train,test}_meta_data.json`` for ``test_fold:
  foldK`` and ``emotion/dataset.py`` loads ``<root>/<path>``.

Here: per session two dialogs (``Ses0KF_impro01``, ``Ses0KM_script01_1``) whose
turns alternate between the session's two actors (two espeak-ng voices),
Harvard sentences spoken with emotion-specific rate, pitch and loudness
(``EMOTIONS``), plus ``exc`` (merged into hap by s3prl), ``fru`` and ``xxx``
turns (dropped by s3prl) so the preprocessing's filtering is exercised.
``dialog/transcriptions/<dialog>.txt`` is written too; the dialog-level audio,
video and motion capture of the real corpus are not. Pass the result with
``-o config.downstream_expert.datarc.root=<root>,,config.downstream_expert.datarc.meta_data=<root>/meta_data``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .voxceleb1 import SAMPLE_RATE, SENTENCES, write_wav16

SESSIONS = 5
LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}  # s3prl IEMOCAP_preprocess.py
KEPT = ("neu", "hap", "ang", "sad", "exc")  # what s3prl's preprocessing keeps (exc -> hap)
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
PREPROCESS = "downstream/emotion/IEMOCAP_preprocess.py"  # relative to s3prl's package directory


@dataclass(frozen=True)
class Emotion:
    """How espeak-ng acts an emotion: rate (wpm), pitch shift, peak level; its evaluation text."""

    speed: int
    pitch_shift: int
    peak: float
    category: str  # the evaluators' word (C-E lines)
    vad: tuple[float, float, float]  # valence, activation, dominance


EMOTIONS = {
    "neu": Emotion(160, 0, 0.5, "Neutral", (2.5, 2.5, 2.5)),
    "hap": Emotion(200, 25, 0.8, "Happiness", (4.0, 3.5, 3.0)),
    "exc": Emotion(215, 30, 0.9, "Excited", (4.0, 4.0, 3.5)),
    "ang": Emotion(220, -12, 0.98, "Anger", (1.5, 4.0, 4.0)),
    "sad": Emotion(115, -22, 0.3, "Sadness", (1.5, 1.5, 2.0)),
    "fru": Emotion(190, -5, 0.85, "Frustration", (2.0, 3.5, 3.5)),
    "xxx": Emotion(170, 5, 0.6, "Other", (2.5, 3.0, 2.5)),
}


@dataclass(frozen=True)
class Actor:
    name: str  # Ses0KF / Ses0KM
    voice: str  # espeak-ng -v
    pitch: int  # espeak-ng -p, before the emotion's shift


FEMALE_VOICES = (("en-us+f2", 62), ("en-gb+f4", 66), ("en-029+f1", 70), ("en-us+f5", 75), ("en-gb-scotland+f3", 60))
MALE_VOICES = (("en-us+m3", 40), ("en-gb+m1", 35), ("en-gb-scotland+m5", 30), ("en-gb-x-rp+m7", 45),
               ("en-gb-x-gbclan+m2", 38))


@dataclass(frozen=True)
class Turn:
    name: str  # e.g. Ses01F_impro01_F000
    dialog: str
    session: int
    actor: str  # Ses01F / Ses01M
    emotion: str  # the majority label written to EmoEvaluation
    text: str
    start: float
    end: float

    @property
    def rel(self) -> str:
        return f"Session{self.session}/sentences/wav/{self.dialog}/{self.name}.wav"


@dataclass
class IemocapSmall:
    root: Path
    turns: list[Turn] = field(default_factory=list)

    @property
    def meta_data(self) -> Path:
        """Where s3prl's preprocessing writes its JSONs (the config's ``meta_data``)."""
        return self.root / "meta_data"


def actors(session: int) -> tuple[Actor, Actor]:
    (fv, fp), (mv, mp) = FEMALE_VOICES[session - 1], MALE_VOICES[session - 1]
    return Actor(f"Ses0{session}F", fv, fp), Actor(f"Ses0{session}M", mv, mp)


def act(text: str, actor: Actor, emotion: str) -> np.ndarray:
    """``text`` spoken by ``actor`` with the rate, pitch and level of ``emotion``."""
    from pruned_upstream.data.speech import Voice, speak_text

    style = EMOTIONS[emotion]
    pitch = min(99, max(0, actor.pitch + style.pitch_shift))
    wav = speak_text(text, Voice(actor.voice, speed=style.speed, pitch=pitch))
    return (style.peak * wav / max(float(np.abs(wav).max()), 1e-6)).astype(np.float32)


def session_emotions(per_emotion: int, rng: random.Random) -> list[str]:
    """A session's turn labels: ``per_emotion`` of each class, one exc, fru and xxx; shuffled."""
    labels = [e for e in LABELS for _ in range(per_emotion)] + ["exc", "fru", "xxx"]
    rng.shuffle(labels)
    return labels


def write_dialog(root: Path, session: int, dialog: str, labels: list[str], rng: random.Random) -> list[Turn]:
    """The wavs of one dialog (turns alternate F/M), its EmoEvaluation and transcription files."""
    turns, counters, clock = [], {"F": 0, "M": 0}, 1.0 + rng.random()
    female, male = actors(session)
    for i, emotion in enumerate(labels):
        actor = (female, male)[(i + (dialog[5] == "M")) % 2]
        gender = actor.name[-1]
        name, text = f"{dialog}_{gender}{counters[gender]:03d}", rng.choice(SENTENCES)
        counters[gender] += 1
        wav = act(text, actor, emotion)
        write_wav16(root / f"Session{session}/sentences/wav/{dialog}/{name}.wav", wav)
        start, end = clock, clock + len(wav) / SAMPLE_RATE
        turns.append(Turn(name, dialog, session, actor.name, emotion, text, round(start, 4), round(end, 4)))
        clock = end + 0.3 + rng.random()
    write_emo_evaluation(root / f"Session{session}/dialog/EmoEvaluation", dialog, turns)
    write_transcription(root / f"Session{session}/dialog/transcriptions/{dialog}.txt", turns)
    return turns


def evaluation_block(turn: Turn) -> str:
    """One turn's block of an EmoEvaluation file (majority line, categorical and attribute lines)."""
    style = EMOTIONS[turn.emotion]
    v, a, d = style.vad
    lines = [f"[{turn.start:.4f} - {turn.end:.4f}]\t{turn.name}\t{turn.emotion}\t[{v:.4f}, {a:.4f}, {d:.4f}]"]
    if turn.emotion == "xxx":  # no majority: the evaluators disagree
        words = ("Frustration", "Neutral state", "Anger")
    else:
        words = (style.category,) * 3
    lines += [f"C-E{k}:\t{word};\t()" for k, word in zip((1, 2, 4), words)]
    lines += [f"A-E{k}:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()" for k in (1, 2)]
    return "\n".join(lines) + "\n\n"


def write_emo_evaluation(directory: Path, dialog: str, turns: list[Turn]) -> Path:
    """``dialog/EmoEvaluation/<dialog>.txt`` plus the per-evaluator sub-directories of the real corpus."""
    for sub in ("Categorical", "Attribute", "Self-evaluation"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    categorical = "".join(f"{t.name} :{EMOTIONS[t.emotion].category}; ()\n" for t in turns)
    (directory / "Categorical" / f"{dialog}_e1_cat.txt").write_text(categorical)
    path = directory / f"{dialog}.txt"
    path.write_text(HEADER + "".join(evaluation_block(t) for t in turns))
    return path


def write_transcription(path: Path, turns: list[Turn]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{t.name} [{t.start:08.4f}-{t.end:08.4f}]: {t.text}\n" for t in turns))
    return path


def make_iemocap(root: str | Path, *, per_emotion: int = 1, seed: int = 0) -> IemocapSmall:
    """Write a small IEMOCAP under ``root`` (Session1 .. Session5); deterministic given ``seed``.

    Each session has two dialogs, each holding ``per_emotion`` turns of every
    class (neu, hap, ang, sad) plus one exc, fru and xxx turn. s3prl's
    preprocessing finds the session from the first ``Session`` in a wav's
    path, so ``root`` must not contain that word.
    """
    root = Path(root).absolute()
    if "Session" in str(root):
        raise ValueError(f"{root}: s3prl's IEMOCAP_preprocess.py cuts wav paths at the first 'Session'; "
                         "choose a root whose path does not contain it")
    rng = random.Random(seed)
    data = IemocapSmall(root)
    for session in range(1, SESSIONS + 1):
        for dialog in (f"Ses0{session}F_impro01", f"Ses0{session}M_script01_1"):
            data.turns += write_dialog(root, session, dialog, session_emotions(per_emotion, rng), rng)
    return data


def run_s3prl_preprocess(root: str | Path, s3prl_root: str | Path | None = None) -> Path:
    """Run s3prl's own ``IEMOCAP_preprocess.py <root>``; returns ``<root>/meta_data``."""
    if s3prl_root is None:
        from pruned_upstream.s3prl_plugin.preflight import installed_s3prl_root

        s3prl_root = installed_s3prl_root()
        if s3prl_root is None:
            raise RuntimeError("s3prl is not installed: its IEMOCAP_preprocess.py writes the meta data")
    script = Path(s3prl_root) / PREPROCESS
    subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True, text=True)
    return Path(root) / "meta_data"


def expected_meta(data: IemocapSmall, test_session: int) -> dict[str, list[dict]]:
    """What s3prl's preprocessing should write for fold ``test_session``, as sorted entry lists."""
    def entries(sessions):
        kept = [t for t in data.turns if t.session in sessions and t.emotion in KEPT]
        # s3prl's "speaker" is the file name's first "_" field: the dialog's Ses0KF / Ses0KM, not the turn's actor
        return sorted(({"path": t.rel, "label": t.emotion.replace("exc", "hap"), "speaker": t.dialog.split("_")[0]}
                       for t in kept), key=lambda e: e["path"])

    others = [s for s in range(1, SESSIONS + 1) if s != test_session]
    return {"train": entries(others), "test": entries([test_session])}


def read_meta(meta_dir: Path, test_session: int, split: str) -> dict:
    """One of s3prl's ``Session<K>/{train,test}_meta_data.json``."""
    return json.loads((Path(meta_dir) / f"Session{test_session}" / f"{split}_meta_data.json").read_text())
