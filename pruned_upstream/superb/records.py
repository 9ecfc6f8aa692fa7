"""What a results reader returns: a model's metrics, one experiment directory, a checked value."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pruned_upstream.errors import CheckpointError
from pruned_upstream.superb.references import METRIC_INFO

RESULT_JSON = "superb_result.json"   # {"task": "SD", "metric": 6.08}, written by our scripts
STDOUT_LOG = "stdout.log"            # the runner's standard output, tee'd by `superb`
PARAMS_COLUMN = "params_M"


@dataclass
class ModelResults:
    """One model's metrics (METRICS units), where each came from, and its size."""

    name: str
    metrics: dict[str, float]
    sources: dict[str, str] = field(default_factory=dict)
    params_m: float | None = None
    upstream_ckpt: str | None = None  # s3prl's -k of the expdirs, when they share one


@dataclass(frozen=True)
class Experiment:
    """One expdir: its task, metrics, and what distinguishes repeated runs."""

    path: Path
    task: str
    metrics: dict[str, float]
    sources: dict[str, str]
    split: str = "test"
    fold: str | None = None       # ER: the IEMOCAP test fold
    layer: int | None = None      # QbE: the upstream layer (`-l`)
    upstream_ckpt: str | None = None  # s3prl's -k (args upstream_ckpt)


def check_metric(metric: str, value: float, where: str) -> float:
    """`value` as a float, refusing NaN/inf, negative errors and accuracies outside 0..100
    (a CheckpointError naming `where`, the file and line the value came from)."""
    if not math.isfinite(value):
        raise CheckpointError(where, f"{metric} = {value} is not a finite number")
    higher = METRIC_INFO[metric][1]
    if metric != "QbE" and (value < 0 or (higher and value > 100)):
        raise CheckpointError(where, f"{metric} = {value} is outside the range of a percentage")
    return value
