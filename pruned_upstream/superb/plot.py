"""Figure 2 of the seed paper: SUPERB score against the number of parameters.

Our models are drawn beside the public reference models of
references.PAPER_TABLE1 whose size is known; every score, references included,
is computed here under the chosen convention (so the figure is consistent
whichever convention is picked).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pruned_upstream.superb.references import PAPER_TABLE1, get_convention
from pruned_upstream.superb.score import superb_score


@dataclass(frozen=True)
class PlotPoint:
    """One marker: a label, the size in millions of parameters and the score."""

    label: str
    params_m: float
    score: float


def reference_points(convention: str = "paper") -> list[PlotPoint]:
    """The Table 1 rows with a known size, scored under `convention`."""
    return [PlotPoint(ref.name, ref.params_m, superb_score(ref.metrics, convention).score)
            for ref in PAPER_TABLE1 if ref.params_m is not None]


def _draw(ax, points: list[PlotPoint], marker: str, color: str, label: str) -> None:
    ax.scatter([p.params_m for p in points], [p.score for p in points],
               marker=marker, s=70, color=color, label=label, zorder=3)
    for point in points:
        ax.annotate(point.label, (point.params_m, point.score), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)


def plot_score_vs_params(models: list[PlotPoint], path: str | Path, convention: str = "paper",
                         with_references: bool = True) -> Path:
    """Write the score-vs-parameters scatter plot of `models` to the PNG `path`."""
    # The Agg canvas is created directly, leaving pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conv = get_convention(convention)
    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    if with_references:
        _draw(ax, reference_points(conv.name), "o", "tab:gray", "public models (paper Table 1)")
    _draw(ax, list(models), "*", "tab:red", "scored here")
    ax.margins(x=0.15, y=0.08)  # room for the labels right of the markers
    ax.set_xlabel("Parameters (M)")
    ax.set_ylabel(f"SUPERB score ({conv.name} convention)")
    ax.set_title("SUPERB score vs. number of parameters")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
