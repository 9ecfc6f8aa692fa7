"""`pruned-upstream score RESULTS`: the per-task points and SUPERB score of models.

The CLI parses the arguments and calls `run_score`; every problem is a
ValueError with a message meant to be printed as one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from pruned_upstream.superb.plot import PlotPoint, plot_score_vs_params
from pruned_upstream.superb.references import TASKS, get_convention
from pruned_upstream.superb.results import ModelResults, read_results
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


def upstream_size(ckpt: str | None) -> dict | None:
    """Parameters (M) and MACs (G, over the leaderboard's 32 test-clean utterances) of an upstream file.

    None when the file is unknown or unreadable: the table then leaves the columns empty.
    """
    if not ckpt or not Path(ckpt).exists():
        return None
    from pruned_upstream.bench import SUPERB_LENGTHS, superb_macs  # torch: only when a file is there
    from pruned_upstream.checkpoints import load_model

    try:
        model = load_model(ckpt)
    except ValueError:
        return None
    return {"params_m": model.num_params() / 1e6,
            "macs_g": superb_macs(model.arch, SUPERB_LENGTHS, leaderboard=True) / 1e9}


def format_table(scored: list[Scored], convention: str = "paper", sizes: dict | None = None) -> str:
    """A plain-text table: model, points per task ('-' when missing), score; size columns when known."""
    conv = get_convention(convention)
    sizes = sizes or {}
    width = max([len("model")] + [len(model.name) for model, _ in scored])
    size_head = f" {'params(M)':>9} {'MACs(G)':>8}" if sizes else ""
    lines = [f"SUPERB score, convention {conv.name!r}: {conv.description}",
             f"{'model':<{width}} " + " ".join(f"{t:>7}" for t in TASKS) + f" {'score':>8}" + size_head]
    for model, result in scored:
        cells = [f"{result.points[t]:7.1f}" if t in result.points else f"{'-':>7}" for t in TASKS]
        line = f"{model.name:<{width}} " + " ".join(cells) + f" {result.score:8.2f}"
        if sizes:
            size = sizes.get(model.name)
            line += f" {size['params_m']:9.2f} {size['macs_g']:8.1f}" if size else f" {'-':>9} {'-':>8}"
        if result.partial:
            line += f"  partial: missing {', '.join(result.missing)}"
        lines.append(line)
    return "\n".join(lines)


def to_json(scored: list[Scored]) -> str:
    """One line: [{"model", "score", "points": {task: points}, "partial", "missing"}, ...]."""
    return json.dumps([{"model": model.name, "score": result.score, "points": result.points,
                        "partial": result.partial, "missing": list(result.missing)}
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


def run_score(results: str, convention: str = "paper", as_json: bool = False,
              allow_missing: bool = False, plot: str | None = None,
              params: dict | None = None) -> int:
    """Print the score table (or one JSON line) of RESULTS; optionally write the plot PNG."""
    conv = get_convention(convention)
    scored = score_models(read_results(results), conv.name, allow_missing)
    sizes = {m.name: size for m, _ in scored if (size := upstream_size(m.upstream_ckpt))}
    params = {**{name: size["params_m"] for name, size in sizes.items()}, **(params or {})}
    points = plot_points(scored, params) if plot else []
    print(to_json(scored) if as_json else format_table(scored, conv.name, sizes))
    if plot:
        written = plot_score_vs_params(points, Path(plot), conv.name)
        if not as_json:
            print(f"plot: {written}")
    return 0
