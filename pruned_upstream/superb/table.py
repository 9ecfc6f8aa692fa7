"""Scored models as a table, as JSON, and as points of the score-vs-size plot (torch-free).

Every problem is a ValueError with a message meant to be printed as one line.
"""

from __future__ import annotations

import json

from pruned_upstream.superb.plot import PlotPoint
from pruned_upstream.superb.references import TASKS, get_convention
from pruned_upstream.superb.records import ModelResults
from pruned_upstream.superb.s3prl_logs import is_our_mtwv
from pruned_upstream.superb.score import ScoreResult, superb_score

Scored = tuple[ModelResults, ScoreResult]


def score_models(models: list[ModelResults], convention: str = "paper",
                 allow_missing: bool = False) -> list[Scored]:
    """Each model with its ScoreResult; an error names the model."""
    scored = []
    for model in models:
        try:
            scored.append((model, superb_score(model.metrics, convention, allow_missing)))
        except ValueError as err:
            raise ValueError(f"model {model.name!r}: {err}") from None
    return scored


OURS_NOTE = ("QbE*: MTWV computed by our re-implementation of the QUESST 2014 TWV "
             "(pruned_upstream/superb/mtwv.py), not QUESST14's official scorer")


def qbe_scorer(model: ModelResults) -> str | None:
    """Who computed the model's QbE MTWV: "ours" (superb/mtwv.py), "official" (QUESST14's scorer, read
    from s3prl's experiment directory), "given" (a results CSV), or None without a QbE value."""
    source = model.sources.get("QbE", "")
    if "QbE" not in model.metrics:
        return None
    if is_our_mtwv(source):
        return "ours"
    return "given" if ".csv, line " in source else "official"


def format_table(scored: list[Scored], convention: str = "paper", sizes: dict | None = None) -> str:
    """A plain-text table: model, points per task ('-' when missing), score; size columns when known.

    A QbE cell computed by our MTWV is marked QbE* with a note under the table.
    """
    conv = get_convention(convention)
    sizes = sizes or {}
    ours = any(qbe_scorer(model) == "ours" for model, _ in scored)
    width = max([len("model")] + [len(model.name) for model, _ in scored])
    size_head = f" {'params(M)':>9} {'MACs(G)':>8}" if sizes else ""
    heads = [f"{t}*" if t == "QbE" and ours else t for t in TASKS]
    lines = [f"SUPERB score, convention {conv.name!r}: {conv.description}",
             f"{'model':<{width}} " + " ".join(f"{t:>7}" for t in heads) + f" {'score':>8}" + size_head]
    for model, result in scored:
        cells = [f"{result.points[t]:7.1f}" if t in result.points else f"{'-':>7}" for t in TASKS]
        line = f"{model.name:<{width}} " + " ".join(cells) + f" {result.score:8.2f}"
        if sizes:
            size = sizes.get(model.name)
            line += f" {size['params_m']:9.2f} {size['macs_g']:8.1f}" if size else f" {'-':>9} {'-':>8}"
        if result.partial:
            line += f"  partial: missing {', '.join(result.missing)}"
        lines.append(line)
    if ours:
        lines.append(OURS_NOTE)
    return "\n".join(lines)


def to_json(scored: list[Scored]) -> str:
    """One line: [{"model", "score", "points": {task: points}, "partial", "missing", "qbe_scorer"}, ...]."""
    return json.dumps([{"model": model.name, "score": result.score, "points": result.points,
                        "partial": result.partial, "missing": list(result.missing),
                        "qbe_scorer": qbe_scorer(model)}
                       for model, result in scored])


def plot_points(scored: list[Scored], params: dict[str, float] | None) -> list[PlotPoint]:
    """Markers for the plot; sizes from `params`, else from the results (CSV params_M)."""
    params = params or {}
    sizes = {model.name: params.get(model.name, model.params_m) for model, _ in scored}
    unknown = [name for name, size in sizes.items() if size is None]
    if unknown:
        raise ValueError(f"no parameter count for model(s) {unknown}: give them (in millions) "
                         "to plot the score against the size")
    return [PlotPoint(model.name + (" (partial)" if result.partial else ""),
                      float(sizes[model.name]), result.score) for model, result in scored]
