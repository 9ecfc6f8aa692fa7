"""Reference points of the SUPERB score and the public models we compare with.

Units follow docs/superb_score.md: accuracies, error rates and F1
in percent; QbE is MTWV x 100 (the leaderboard stores it that way).

Sources (cited once here, and beside each table):
  [lb-ref]  superbbenchmark/website-react, frontend/src/Data.js,
            `reference_points` (FBANK and SOTA points of the public set).
  [lb-pub]  superbbenchmark/superbbenchmark.github.io, src/data/public.json
            (per-model metrics and `paramShared` of the public leaderboard).
  [paper]   Wang et al., "Task-Agnostic Structured Pruning of Speech
            Representation Models", Interspeech 2023, Table 1
            (docs/references.md [Wang2023]).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

# The ten SUPERB tasks, in the order of the leaderboard's public set.
TASKS: tuple[str, ...] = ("PR", "KS", "IC", "SID", "ER", "ASR", "QbE", "SF", "ASV", "SD")

# The eleven metric columns (SF has two); these are also the CSV columns.
METRICS: tuple[str, ...] = (
    "PR", "KS", "IC", "SID", "ER", "ASR", "QbE", "SF-F1", "SF-CER", "ASV", "SD",
)

# What each metric measures; "higher" tells the direction. The formula needs
# no sign flip (a lower-is-better metric has m_sota < m_fbank), the direction
# is kept for tables, plots and sanity checks.
METRIC_INFO: Mapping[str, tuple[str, bool]] = MappingProxyType({
    "PR": ("PER %", False),
    "KS": ("accuracy %", True),
    "IC": ("accuracy %", True),
    "SID": ("accuracy %", True),
    "ER": ("accuracy %", True),
    "ASR": ("WER % (no LM)", False),
    "QbE": ("MTWV x 100", True),
    "SF-F1": ("slot-type F1 %", True),
    "SF-CER": ("slot-value CER %", False),
    "ASV": ("EER %", False),
    "SD": ("DER %", False),
})

# FBANK baseline, [lb-ref] `*_public`[0] (the same numbers are FBANK's row in [lb-pub]).
FBANK: Mapping[str, float] = MappingProxyType({
    "PR": 82.01,            # PR_per_public
    "KS": 41.3826674,       # KS_acc_public
    "IC": 9.649354219,      # IC_acc_public
    "SID": 20.058174,       # SID_acc_public
    "ER": 48.23672168,      # ER_acc_public
    "ASR": 23.18,           # ASR_wer_public
    "QbE": 0.58,            # QbE_mtwv_public
    "SF-F1": 69.64,         # SF_f1_public
    "SF-CER": 52.94,        # SF_cer_public
    "ASV": 9.56,            # SV_eer_public
    "SD": 10.05,            # SD_der_public
})

# Leaderboard SOTA points, [lb-ref] `*_public`[1]. Each is the best entry of the
# SUPERB paper's (Interspeech 2021) rows in [lb-pub] for that metric.
LEADERBOARD_SOTA: Mapping[str, float] = MappingProxyType({
    "PR": 3.53,             # PR_per_public (HuBERT Large)
    "KS": 96.66,            # KS_acc_public (wav2vec 2.0 Large)
    "IC": 98.76,            # IC_acc_public (HuBERT Large)
    "SID": 90.3,            # SID_acc_public (HuBERT Large, 90.33 in [lb-pub])
    "ER": 67.62,            # ER_acc_public (HuBERT Large)
    "ASR": 3.62,            # ASR_wer_public (HuBERT Large)
    "QbE": 7.36,            # QbE_mtwv_public (HuBERT Base)
    "SF-F1": 89.81,         # SF_f1_public (HuBERT Large)
    "SF-CER": 21.76,        # SF_cer_public (HuBERT Large)
    "ASV": 5.11,            # SV_eer_public (HuBERT Base)
    "SD": 5.62,             # SD_der_public (wav2vec 2.0 Large)
})

# WavLM Large, the SOTA row of the seed paper ([paper] footnote 2), from
# [lb-pub] row "WavLM Large" (uploaded 2021-12-30).
WAVLM_LARGE: Mapping[str, float] = MappingProxyType({
    "PR": 3.06, "KS": 97.86, "IC": 99.31, "SID": 95.49, "ER": 70.62, "ASR": 3.44,
    "QbE": 8.86, "SF-F1": 92.21, "SF-CER": 18.36, "ASV": 3.77, "SD": 3.24,
})


@dataclass(frozen=True)
class Convention:
    """A pair of reference rows and the metrics that make up each task's points."""

    name: str
    fbank: Mapping[str, float]
    sota: Mapping[str, float]
    task_metrics: Mapping[str, tuple[str, ...]]
    description: str


def _task_metrics(sf: tuple[str, ...]) -> Mapping[str, tuple[str, ...]]:
    table = {task: (task,) for task in TASKS}
    table["SF"] = sf
    return MappingProxyType(table)


CONVENTIONS: Mapping[str, Convention] = MappingProxyType({
    # The public leaderboard: overall_metrics.js averages SF's F1 and CER points.
    "leaderboard": Convention(
        "leaderboard", FBANK, LEADERBOARD_SOTA, _task_metrics(("SF-F1", "SF-CER")),
        "FBANK and SOTA points of the public leaderboard; SF = mean of F1 and CER points",
    ),
    # The seed paper's Table 1: SOTA = WavLM Large and SF counted by F1 only
    # (this reproduces all its consistent rows to 0.01; see docs/superb_score.md).
    "paper": Convention(
        "paper", FBANK, WAVLM_LARGE, _task_metrics(("SF-F1",)),
        "leaderboard FBANK, WavLM Large as SOTA; SF = F1 points only (seed paper, Table 1)",
    ),
})


def get_convention(name: str | Convention) -> Convention:
    """The convention called `name`; a ValueError lists the known names."""
    if isinstance(name, Convention):
        return name
    if name not in CONVENTIONS:
        raise ValueError(
            f"unknown SUPERB score convention {name!r}; expected one of {sorted(CONVENTIONS)}")
    return CONVENTIONS[name]


@dataclass(frozen=True)
class ReferenceModel:
    """A published model: metrics in METRICS units, parameters in millions."""

    name: str
    params_m: float | None
    metrics: Mapping[str, float]
    published_score: float | None = None
    source: str = "[paper] Table 1"
    notes: str = ""


def _row(values: tuple[float, ...]) -> Mapping[str, float]:
    """Table 1's column order: KS IC PR ASR ER QbE SF-F1 SF-CER SID SV SD."""
    order = ("KS", "IC", "PR", "ASR", "ER", "QbE", "SF-F1", "SF-CER", "SID", "ASV", "SD")
    return MappingProxyType(dict(zip(order, values, strict=True)))


# [paper] Table 1, every row, with the SUPERB score it prints. Parameters:
# [lb-pub] `paramShared` where the model is on the leaderboard; "Proposed" is
# the paper's "reduces 72% of the parameters" (Conclusion) of WavLM Base's
# 94.70 M, i.e. 0.28 * 94.70 = 26.5 M (derived, approximate); DistilWavLM and
# "w/o FAHP" have no published size.
PAPER_TABLE1: tuple[ReferenceModel, ...] = (
    ReferenceModel("wav2vec", 32.54, _row(
        (95.59, 84.92, 31.58, 15.86, 59.79, 4.85, 76.37, 43.71, 56.56, 7.99, 9.90)), 491.59),
    ReferenceModel("wav2vec 2.0 Base", 95.04, _row(
        (96.23, 92.35, 5.74, 6.43, 63.43, 2.33, 88.3, 24.77, 75.18, 6.02, 6.08)), 735.00),
    ReferenceModel("HuBERT Base", 94.68, _row(
        (96.30, 98.34, 5.41, 6.42, 64.92, 7.36, 88.53, 25.2, 81.42, 5.11, 5.88)), 837.63),
    ReferenceModel("WavLM Base", 94.70, _row(
        (96.79, 98.63, 4.84, 6.21, 65.94, 8.70, 89.38, 22.86, 84.51, 4.69, 4.55)), 895.99),
    ReferenceModel("DistilHuBERT", 23.49, _row(
        (95.98, 94.99, 16.27, 13.37, 63.02, 5.11, 82.57, 35.39, 73.54, 8.55, 6.19)), 647.88,
        notes="SF-CER 35.39 here; [lb-pub] has 35.59 (irrelevant under 'paper': F1 only)"),
    ReferenceModel("DistilWavLM", None, _row(
        (96.40, 96.39, 14.18, 13.24, 63.69, 7.07, 85.27, 31.80, 71.00, 8.87, 7.2)), 668.39),
    ReferenceModel("Proposed (paper)", 26.5, _row(
        (96.57, 98.08, 9.09, 10.61, 63.61, 7.40, 87.14, 27.13, 74.56, 6.17, 6.11)), 769.62),
    ReferenceModel("w/o FAHP (paper)", None, _row(
        (96.14, 98.05, 10.51, 11.83, 63.78, 5.19, 85.57, 30.91, 70.03, 6.12, 7.18)), 721.79,
        notes="inconsistent: its metrics give 707.11; with SD 6.18 instead of 7.18 they "
              "give 721.80, so one digit of SD (or the score) is a typo"),
)

# The row of Table 1 whose printed score its own metrics do not reproduce.
INCONSISTENT_TABLE1_ROW = "w/o FAHP (paper)"


def reference_model(name: str) -> ReferenceModel:
    """The Table 1 row called `name`; a ValueError lists the known names."""
    for model in PAPER_TABLE1:
        if model.name == name:
            return model
    raise ValueError(
        f"no reference model {name!r}; known: {[m.name for m in PAPER_TABLE1]}")
