"""`pruned-upstream score RESULTS [--convention paper|leaderboard] [--json] [--allow-missing] [--plot PNG]`.

RESULTS is a CSV (docs/superb_score.md) or a directory of s3prl experiment
directories. When a result names its upstream file, the table adds the file's
parameters and its MACs over the leaderboard's utterances (this needs torch;
the score itself does not).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..superb.plot import plot_score_vs_params
from ..superb.references import get_convention
from ..superb.results import read_results
from ..superb.table import format_table, plot_points, score_models, to_json


def upstream_size(ckpt: str | None) -> dict | None:
    """Parameters (M) and MACs (G, over the leaderboard's 32 test-clean utterances) of an upstream file.

    None when the file is unknown or unreadable: the table then leaves the columns empty.
    """
    if not ckpt or not (Path(ckpt).is_file() or Path(ckpt).is_dir()):
        return None  # unknown, or a FIFO / device an expdir's args YAML may name: never opened
    from ..checkpoints import load_model
    from ..macs import SUPERB_LENGTHS, superb_macs

    try:
        model = load_model(ckpt)
    except (ValueError, OSError, MemoryError) as err:  # CheckpointError included: say why the columns stay empty
        print(f"warning: {err}; its parameters and MACs are left out", file=sys.stderr)
        return None
    return {"params_m": model.num_params() / 1e6,
            "macs_g": superb_macs(model.arch, SUPERB_LENGTHS, leaderboard=True) / 1e9}


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
