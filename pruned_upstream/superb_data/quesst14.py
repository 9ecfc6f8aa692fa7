"""A small QUESST 2014 (query-by-example) database for QbE, in quesst14Database's layout.

The real data: ``quesst14Database.tgz`` (speech.fit.vutbr.cz/files/), unpacked
as ``quesst14Database/`` (s3prl ``downstream/docs/superb.md``, "QbE"). What
s3prl's ``downstream/quesst14_dtw/dataset.py`` reads:

* ``scoring/language_key_utterances.lst`` (search utterances),
  ``scoring/language_key_dev.lst`` (``-t dev``) and
  ``scoring/language_key_eval.lst`` (``-t test``): lines ``<path> <language>``,
  ``<path>`` starting with the database directory, e.g.
  ``quesst14Database/Audio/quesst14_00000.wav nnenglish``; s3prl keeps
  ``nnenglish`` lines only and drops the path's first component (``re.sub(r"^.*?\\/", "", path)``);
* the audio they name: ``Audio/quesst14_NNNNN.wav``,
  ``dev_queries/quesst14_dev_NNNN.wav``, ``eval_queries/quesst14_eval_NNNN.wav``
  (8 kHz mono; s3prl converts with sox ``channels 1, rate 16000, gain -3``).

What QUESST14's scorer (``scoring/score-TWV-Cnxe.sh``, run from ``scoring/``)
reads: ``scoring/groundtruth_quesst14_dev/`` and ``.../groundtruth_quesst14_eval/``,
each with an ECF (the utterances, ``<excerpt audio_filename=...>``), a term
list (``<term termid=...>``) and an RTTM of the occurrences
(``LEXEME <utterance> 1 <tbeg> <dur> <query id> ...``). The RTTM name,
``quesst14_<split>.rttm``, is the real one (read under that name by public
QUESST14 loaders); the ECF and term list names follow the QUESST 2015 layout
(``quesst2015.ecf.xml``, ``quesst2015_dev.tlist.xml``) and are an assumption;
our scorer (``pruned_upstream/superb/mtwv.py``) globs ``*.ecf.xml``,
``*.tlist.xml`` and ``*.rttm``. The scorer itself (and its jar) is not
reproduced here.

Here queries are single English words spoken by one espeak-ng voice; the
utterances are ``<carrier> <word> <carrier>`` sentences by other voices, the
three parts synthesised apart and concatenated, so each query's position is
exact; some utterances hold no query word. Like the real database, the lists
also hold non-English entries (one Czech query per split and one Czech
utterance holding the dev one), which s3prl skips and the scorer still counts.
Exact matches only (QUESST's type-1 queries). No torch or s3prl import at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUDIO_SR = 8000  # QUESST14's audio rate
DB = "quesst14Database"
SPLIT_QUERIES = {"dev": ("window", "garden", "yellow"), "eval": ("river", "morning", "silver")}
CZECH_QUERIES = {"dev": "voda", "eval": "kniha"}
QUERY_VOICE = ("en-us+m3", 50)
DOC_VOICES = (("en-gb+f4", 65), ("en-gb-scotland+m5", 40), ("en-029+f1", 60), ("en-us+f2", 55))
PREFIXES = ("i saw the", "they talked about the", "look at that", "we found a", "she liked the")
SUFFIXES = ("near the old house", "after lunch", "on the table", "every day", "in the city")
FILLERS = ("table", "bottle", "pencil")  # the word slot of utterances without a query
GAP_MS = 60


@dataclass(frozen=True)
class Occurrence:
    query: str  # query id, e.g. quesst14_dev_0001
    utterance: str  # e.g. quesst14_00004
    tbeg: float
    dur: float


def _speak(text: str, voice: tuple[str, int]) -> np.ndarray:
    """espeak-ng at 16 kHz, trimmed of its leading/trailing silence."""
    from pruned_upstream.data.speech import Voice, speak_text

    wav = speak_text(text, Voice(voice[0], speed=160, pitch=voice[1]))
    loud = np.flatnonzero(np.abs(wav) > 0.02 * float(np.abs(wav).max()))
    return wav[loud[0]: loud[-1] + 1]


def _write(path: Path, wav16k: np.ndarray, rng: np.random.Generator) -> float:
    """Write 8 kHz 16-bit PCM with a little noise; returns the duration in seconds."""
    import soundfile as sf

    from pruned_upstream.data.audio import resample_wav

    wav = resample_wav(np.asarray(wav16k, dtype=np.float32), 16000, AUDIO_SR)
    wav = 0.7 * wav / max(1e-6, float(np.abs(wav).max())) + 0.002 * rng.standard_normal(len(wav))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.astype(np.float32), AUDIO_SR, subtype="PCM_16")
    return len(wav) / AUDIO_SR


def _sentence(prefix: str, word: str, suffix: str, voice: tuple[str, int]) -> tuple[np.ndarray, float, float]:
    """``prefix word suffix`` with GAP_MS pauses; (16 kHz audio, word start s, word duration s)."""
    gap = np.zeros(GAP_MS * 16, dtype=np.float32)
    head, body, tail = _speak(prefix, voice), _speak(word, voice), _speak(suffix, voice)
    lead = np.zeros(16 * 150, dtype=np.float32)
    wav = np.concatenate([lead, head, gap, body, gap, tail, lead])
    return wav, (len(lead) + len(head) + len(gap)) / 16000, len(body) / 16000


def _utterance_plan(rng: np.random.Generator) -> list[tuple[str, str | None]]:
    """(language, query word or None) per utterance: each English query in two, three fillers, one Czech."""
    plan = [("nnenglish", w) for words in SPLIT_QUERIES.values() for w in words for _ in range(2)]
    plan += [("nnenglish", None)] * len(FILLERS)
    order = list(rng.permutation(len(plan)))
    return [plan[i] for i in order] + [("czech", CZECH_QUERIES["dev"])]


def _write_utterances(db: Path, rng: np.random.Generator) -> tuple[list[tuple[str, str, float]], list[tuple[str, float, float]]]:
    """Audio/ files; returns (id, language, duration) rows and (word, tbeg, dur) per utterance id order."""
    rows, spans, fillers = [], [], iter(FILLERS)
    for i, (language, word) in enumerate(_utterance_plan(rng)):
        utt = f"quesst14_{i:05d}"
        if language == "czech":
            wav, tbeg, dur = _sentence("to je", word, "dobre", ("cs", 50))
        else:
            voice = DOC_VOICES[int(rng.integers(len(DOC_VOICES)))]
            prefix, suffix = PREFIXES[int(rng.integers(len(PREFIXES)))], SUFFIXES[int(rng.integers(len(SUFFIXES)))]
            wav, tbeg, dur = _sentence(prefix, word or next(fillers), suffix, voice)
        rows.append((utt, language, _write(db / "Audio" / f"{utt}.wav", wav, rng)))
        spans.append((word, round(tbeg, 3), round(dur, 3)))
    return rows, spans


def _write_queries(db: Path, split: str, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """``<split>_queries/`` files; returns (query id, language, word)."""
    items = [(w, "nnenglish", QUERY_VOICE) for w in SPLIT_QUERIES[split]]
    items.append((CZECH_QUERIES[split], "czech", ("cs", 45)))
    out = []
    for i, (word, language, voice) in enumerate(items):
        qid = f"quesst14_{split}_{i:04d}"
        _write(db / f"{split}_queries" / f"{qid}.wav", _speak(word, voice), rng)
        out.append((qid, language, word))
    return out


def _lst(path: Path, entries: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{DB}/{rel} {language}\n" for rel, language in entries))


def write_groundtruth(directory: Path, split: str, utterances, queries, occurrences: list[Occurrence]) -> None:
    """``quesst14.ecf.xml``, ``quesst14_<split>.tlist.xml``, ``quesst14_<split>.rttm`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    total = sum(dur for _, _, dur in utterances)
    ecf = [f'<ecf source_signal_duration="{total:.3f}" version="quesst14-small" language="multiple">']
    ecf += [f'  <excerpt audio_filename="Audio/{utt}.wav" channel="1" tbeg="0.000" dur="{dur:.3f}" '
            f'source_type="{language}"/>' for utt, language, dur in utterances]
    (directory / "quesst14.ecf.xml").write_text("\n".join(ecf + ["</ecf>"]) + "\n")
    terms = ['<termlist ecf_filename="quesst14.ecf.xml" version="quesst14-small" language="multiple" encoding="UTF-8">']
    terms += [f'  <term termid="{qid}"><termtext>{qid}</termtext></term>' for qid, _, _ in queries]
    (directory / f"quesst14_{split}.tlist.xml").write_text("\n".join(terms + ["</termlist>"]) + "\n")
    rttm = [f"LEXEME {o.utterance} 1 {o.tbeg:.3f} {o.dur:.3f} {o.query} lex <NA> <NA>" for o in occurrences]
    (directory / f"quesst14_{split}.rttm").write_text("".join(f"{line}\n" for line in rttm))


def make_quesst14(root: str | Path, seed: int = 0) -> Path:
    """Write ``root/quesst14Database``; returns it (what ``$QUESST14_ROOT`` names)."""
    rng = np.random.default_rng(seed)
    db = Path(root).resolve() / DB
    scoring = db / "scoring"
    scoring.mkdir(parents=True, exist_ok=True)
    utterances, spans = _write_utterances(db, rng)
    _lst(scoring / "language_key_utterances.lst", [(f"Audio/{u}.wav", lang) for u, lang, _ in utterances])
    for split in ("dev", "eval"):
        queries = _write_queries(db, split, rng)
        _lst(scoring / f"language_key_{split}.lst", [(f"{split}_queries/{q}.wav", lang) for q, lang, _ in queries])
        occurrences = [Occurrence(qid, utt, tbeg, dur) for qid, _, word in queries
                       for (utt, _, _), (w, tbeg, dur) in zip(utterances, spans) if w == word]
        write_groundtruth(scoring / f"groundtruth_quesst14_{split}", split, utterances, queries, occurrences)
    return db
