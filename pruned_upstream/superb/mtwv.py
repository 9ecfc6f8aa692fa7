"""QbE's MTWV (Maximum Term-Weighted Value), computed by us from the QUESST 2014 definitions.

SUPERB scores QbE with QUESST14's own scorer (``scoring/score-TWV-Cnxe.sh``
and its ``MediaEvalQUESST2014.jar``, shipped inside quesst14Database.tgz),
which prints ``actTWV: a  maxTWV: b  Threshold: c``. Where that scorer is
absent (our small data), this module computes the same quantities; results are
OURS, not the official scorer's, and are written to ``OURS_LOG`` (never to
``score_twv.log``, the official scorer's output name).

Definitions (NIST 2006 STD evaluation plan, adopted by MediaEval SWS 2012-13
and QUESST 2014 -- X. Anguera, L. J. Rodriguez-Fuentes, I. Szoke, A. Buzo,
F. Metze, "Query by Example Search on Speech at Mediaeval 2014", MediaEval 2014
Workshop, CEUR-WS Vol-1263, paper 35 -- where ATWV/MTWV are the secondary
metric, Cnxe the primary). A trial is a (query q, utterance d) pair; every
query of the ground truth's ``.tlist.xml`` is searched in every utterance of
its ``.ecf.xml``; q occurs in d when the ``.rttm`` has a ``LEXEME d ... q``
line. For a threshold theta, a trial is a detection when its score >= theta:

    P_miss(q, theta) = 1 - N_hit(q, theta) / N_true(q)
    P_FA(q, theta)   = N_FA(q, theta) / (N_utt - N_true(q))
    TWV(theta)       = 1 - mean_q [ P_miss(q, theta) + beta * P_FA(q, theta) ]
    beta             = (C_FA / C_miss) * (1 - P_target) / P_target
    MTWV             = max_theta TWV(theta)  (theta = +inf, nothing detected, gives 0)
    ATWV             = TWV of the system's own YES/NO decisions

with C_miss = 100, C_FA = 1, P_target = 0.0008, so beta = 12.49 (the values
of the MediaEval SWS/QUESST TWV; see docs/tasks/qbe.md). The mean runs over
queries with N_true(q) > 0 (NIST: terms without reference occurrences are not
scored). A trial the system did not output gets the default score (the
``-10`` of superb.md's scoring command) and decision NO, as the official
scorer does for "incomplete" systems -- s3prl scores English trials only, so
every other trial of the real ground truth is such a trial.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

C_MISS, C_FA, P_TARGET = 100.0, 1.0, 0.0008
DEFAULT_SCORE = -10.0  # superb.md: ./score-TWV-Cnxe.sh EXPDIR groundtruth_quesst14_dev -10
STDLIST = "benchmark.stdlist.xml"  # written by s3prl downstream/quesst14_dtw/expert.py log_records
OURS_LOG = "score_twv_ours.log"  # read by pruned_upstream.superb.results.read_qbe_mtwv
OURS_JSON = "mtwv_ours.json"
OURS_LABEL = "MTWV computed by pruned_upstream.superb.mtwv (ours), not QUESST14's official scorer"


def beta(c_miss: float = C_MISS, c_fa: float = C_FA, p_target: float = P_TARGET) -> float:
    """The false-alarm weight of TWV: (C_FA / C_miss) * (1 - P_target) / P_target."""
    return (c_fa / c_miss) * (1.0 - p_target) / p_target


@dataclass(frozen=True)
class GroundTruth:
    terms: tuple[str, ...]  # query ids (tlist termid)
    utterances: tuple[str, ...]  # utterance ids (ecf audio_filename stem)
    occurrences: frozenset  # {(term, utterance)}


@dataclass(frozen=True)
class TwvResult:
    act_twv: float
    max_twv: float
    threshold: float  # the theta of max_twv (inf: detect nothing)
    beta: float
    n_terms_scored: int  # queries with at least one occurrence
    n_utterances: int
    n_trials_given: int  # trials present in the system output
    default_score: float

    def line(self) -> str:
        """The official scorer's result line, with our numbers."""
        return f"actTWV: {self.act_twv:.8f}  maxTWV: {self.max_twv:.8f}  Threshold: {self.threshold:.4f}"


def _stem(name: str) -> str:
    return Path(name).with_suffix("").name if name.lower().endswith((".wav", ".sph", ".flac")) else Path(name).name


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise ValueError(f"{directory}: expected one {pattern}, found {[p.name for p in found]}")
    return found[0]


def read_groundtruth(directory: str | Path) -> GroundTruth:
    """QUESST's ``groundtruth_quesst14_<split>/``: one ``*.tlist.xml``, ``*.ecf.xml``, ``*.rttm``."""
    directory = Path(directory)
    terms = tuple(t.get("termid") for t in ET.parse(_one(directory, "*.tlist.xml")).getroot().iter("term"))
    utts = tuple(_stem(e.get("audio_filename")) for e in ET.parse(_one(directory, "*.ecf.xml")).getroot().iter("excerpt"))
    occurrences = set()
    for line in _one(directory, "*.rttm").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0] == "LEXEME" and fields[5] != "NO_KEYWORD":
            occurrences.add((fields[5], _stem(fields[1])))
    if not terms or not utts:
        raise ValueError(f"{directory}: no terms ({len(terms)}) or no utterances ({len(utts)})")
    return GroundTruth(terms, utts, frozenset(occurrences))


def read_stdlist(path: str | Path) -> dict[tuple[str, str], tuple[float, bool]]:
    """(termid, file) -> (score, decision YES) of a NIST ``.stdlist.xml`` (s3prl's ``benchmark.stdlist.xml``)."""
    trials = {}
    for termlist in ET.parse(path).getroot().iter("detected_termlist"):
        term = termlist.get("termid")
        for hit in termlist.iter("term"):
            key = (term, _stem(hit.get("file")))
            score, yes = float(hit.get("score")), hit.get("decision", "NO").upper() == "YES"
            if key not in trials or score > trials[key][0]:  # several hits in one file: the best one
                trials[key] = (score, yes)
    return trials


def twv(truth: GroundTruth, trials: dict[tuple[str, str], tuple[float, bool]],
        default_score: float = DEFAULT_SCORE, weight: float | None = None) -> TwvResult:
    """actTWV, MTWV and its threshold of ``trials`` against ``truth`` (definitions in the module doc)."""
    weight = beta() if weight is None else weight
    n_utt = len(truth.utterances)
    utts = set(truth.utterances)
    n_true = dict.fromkeys(truth.terms, 0)
    for q, d in truth.occurrences:
        if q in n_true and d in utts:
            n_true[q] += 1
    scored = [q for q in truth.terms if n_true[q] > 0]
    if not scored:
        raise ValueError("no query of the ground truth occurs in any utterance: TWV is undefined")
    scores, gains, act = [], [], 0.0
    for q in scored:
        hit_gain = 1.0 / n_true[q]  # a hit lowers P_miss(q) by this
        fa_cost = weight / (n_utt - n_true[q]) if n_utt > n_true[q] else 0.0  # an FA raises beta*P_FA(q)
        for d in truth.utterances:
            score, yes = trials.get((q, d), (default_score, False))
            gain = hit_gain if (q, d) in truth.occurrences else -fa_cost
            scores.append(score)
            gains.append(gain)
            act += gain if yes else 0.0
    scores, gains = np.asarray(scores), np.asarray(gains) / len(scored)
    order = np.argsort(-scores, kind="stable")
    cum = np.cumsum(gains[order])  # TWV with theta = scores[order][i]: all trials scoring >= it detected
    last_of_tie = np.r_[scores[order][1:] != scores[order][:-1], True]
    values, thresholds = cum[last_of_tie], scores[order][last_of_tie]
    best = int(np.argmax(values))
    max_twv, threshold = (float(values[best]), float(thresholds[best])) if values[best] > 0 else (0.0, float("inf"))
    given = sum(1 for key in trials if key[0] in truth.terms and key[1] in truth.utterances)
    return TwvResult(act / len(scored), max_twv, threshold, weight, len(scored), n_utt, given, default_score)


def score_expdir(expdir: str | Path, groundtruth: str | Path, default_score: float = DEFAULT_SCORE) -> TwvResult:
    """Score ``EXPDIR/benchmark.stdlist.xml``; write ``OURS_LOG`` and ``OURS_JSON`` there."""
    expdir = Path(expdir)
    stdlist = expdir / STDLIST
    if not stdlist.is_file():
        raise FileNotFoundError(f"{stdlist} is missing: run -m evaluate -d quesst14_dtw first")
    result = twv(read_groundtruth(groundtruth), read_stdlist(stdlist), default_score)
    (expdir / OURS_LOG).write_text(f"# {OURS_LABEL}\n# system {stdlist}, ground truth {Path(groundtruth)}\n"
                                   f"{result.line()}\n")
    info = {"scorer": "ours", "label": OURS_LABEL, "groundtruth": str(groundtruth), **asdict(result),
            "c_miss": C_MISS, "c_fa": C_FA, "p_target": P_TARGET}
    info["threshold"] = None if np.isinf(result.threshold) else result.threshold  # inf: nothing detected
    (expdir / OURS_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return result
