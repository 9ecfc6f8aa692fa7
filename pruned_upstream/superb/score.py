"""The SUPERB score: per-task points and their mean (pure Python).

Eq. (6) of the seed paper, as the leaderboard computes it
(website-react frontend/src/overall_metrics.js, `interpolation` and
`task_aggregate`):

    p_t = 1000 * (m_u - m_fbank) / (m_sota - m_fbank)
    superb_s = mean over tasks t of p_t

A task with several metrics (SF under the `leaderboard` convention) averages
their points first. Lower-is-better metrics need no sign flip: their m_sota is
below m_fbank, so the ratio is already positive for an improvement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from pruned_upstream.superb.references import METRICS, TASKS, Convention, get_convention


@dataclass(frozen=True)
class ScoreResult:
    """A model's SUPERB score under one convention.

    score: mean of `points` over the tasks that have them.
    points: task -> points (only tasks whose metrics were given).
    missing: tasks without the metrics the convention needs, in TASKS order.
    partial: True when `missing` is not empty (then `score` is not comparable
        with a full score).
    """

    score: float
    points: dict[str, float]
    missing: tuple[str, ...]
    partial: bool
    convention: str


def metric_points(metric: str, value: float, convention: str | Convention = "paper") -> float:
    """p = 1000 * (m_u - m_fbank) / (m_sota - m_fbank) for one metric (Eq. 6)."""
    conv = get_convention(convention)
    if metric not in conv.fbank:
        raise ValueError(f"unknown SUPERB metric {metric!r}; expected one of {list(METRICS)}")
    fbank, sota = conv.fbank[metric], conv.sota[metric]
    return 1000.0 * (float(value) - fbank) / (sota - fbank)


def _has(metrics: Mapping[str, float | None], metric: str) -> bool:
    value = metrics.get(metric)
    return value is not None and not math.isnan(float(value))


def task_points(task: str, metrics: Mapping[str, float | None],
                convention: str | Convention = "paper") -> float:
    """Points of one task: the mean of the points of its metrics under `convention`."""
    conv = get_convention(convention)
    if task not in conv.task_metrics:
        raise ValueError(f"unknown SUPERB task {task!r}; expected one of {list(TASKS)}")
    names = conv.task_metrics[task]
    absent = [name for name in names if not _has(metrics, name)]
    if absent:
        raise ValueError(
            f"task {task} needs metric(s) {absent} under the {conv.name!r} convention")
    return sum(metric_points(name, metrics[name], conv) for name in names) / len(names)


def _check_names(metrics: Mapping[str, float | None]) -> None:
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown SUPERB metric(s) {unknown}; expected names from {list(METRICS)}")


def missing_tasks(metrics: Mapping[str, float | None],
                  convention: str | Convention = "paper") -> tuple[str, ...]:
    """Tasks, in TASKS order, lacking a metric that `convention` needs."""
    conv = get_convention(convention)
    return tuple(task for task in TASKS
                 if not all(_has(metrics, name) for name in conv.task_metrics[task]))


def superb_score(metrics: Mapping[str, float | None], convention: str | Convention = "paper",
                 allow_missing: bool = False) -> ScoreResult:
    """SUPERB score of one model; `metrics` maps METRICS names to values (None = missing).

    A missing task is a ValueError naming it unless `allow_missing`; then the
    score is the mean over the tasks present and the result is marked partial.
    """
    conv = get_convention(convention)
    _check_names(metrics)
    missing = missing_tasks(metrics, conv)
    if missing and not allow_missing:
        raise ValueError(
            f"missing SUPERB task(s) {', '.join(missing)} (convention {conv.name!r} needs "
            f"{', '.join(m for t in missing for m in conv.task_metrics[t])}); "
            "give them or allow a partial score")
    present = [task for task in TASKS if task not in missing]
    if not present:
        raise ValueError("no SUPERB task has a result: cannot compute a score")
    points = {task: task_points(task, metrics, conv) for task in present}
    score = sum(points.values()) / len(points)
    return ScoreResult(score, points, missing, bool(missing), conv.name)
