"""Read SUPERB results: a CSV table, or s3prl experiment directories.

RESULTS is one of
  (a) a CSV file, header `model,PR,KS,IC,SID,ER,ASR,QbE,SF-F1,SF-CER,ASV,SD`
      (any order, a subset allowed, optional `params_M`); an empty cell is a
      missing metric;
  (b) one s3prl experiment directory (expdir): a directory holding the
      `args_<date>.yaml` that s3prl's run_downstream.py dumps (`vars(args)`),
      or our `superb_result.json`; the model is named after it;
  (c) a directory of expdirs (one model, named after the directory), or a
      directory of such directories (one model each).

Units are those of references.METRICS (percent; QbE = MTWV x 100). What is
read per task, and the unit conversion, is in TASK_SOURCES and
docs/superb_score.md; every value keeps the file:line it came from.
"""

from __future__ import annotations

from pathlib import Path

from pruned_upstream.superb.expdirs import is_expdir, model_from_expdirs, read_expdir
from pruned_upstream.superb.records import RESULT_JSON, ModelResults
from pruned_upstream.superb.results_csv import read_csv

__all__ = ["ModelResults", "read_csv", "read_expdir", "read_results"]


def read_results(path: str | Path) -> list[ModelResults]:
    """Models in RESULTS: a CSV file, an expdir, a directory of expdirs, or of model dirs."""
    path = Path(path)
    if path.is_file():
        return read_csv(path)
    if not path.is_dir():
        raise ValueError(f"results {path} does not exist")
    if is_expdir(path):
        return [model_from_expdirs(path.name, [path])]
    children = sorted(child for child in path.iterdir() if child.is_dir())
    if any(is_expdir(child) for child in children):
        return [model_from_expdirs(path.name, [c for c in children if is_expdir(c)])]
    models = [(c.name, [g for g in sorted(c.iterdir()) if is_expdir(g)]) for c in children]
    models = [(name, expdirs) for name, expdirs in models if expdirs]
    if not models:
        raise ValueError(f"{path}: no s3prl expdir (a directory with args_*.yaml or {RESULT_JSON}) "
                         "in it, in its subdirectories or theirs")
    return [model_from_expdirs(name, expdirs) for name, expdirs in models]
