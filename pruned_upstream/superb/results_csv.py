"""(a) of superb/results.py: a CSV table of metrics, one model per row."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pruned_upstream.superb.records import PARAMS_COLUMN, ModelResults, check_metric
from pruned_upstream.superb.references import METRICS


def _parse_cell(cell: str, where: str) -> float | None:
    if not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        raise ValueError(f"{where}: {cell!r} is not a number") from None


def _csv_header(header: list[str], path: Path) -> list[str]:
    names = [name.strip() for name in header]
    known = {"model", PARAMS_COLUMN, *METRICS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {unknown}; known: model, "
                         f"{', '.join(METRICS)}, {PARAMS_COLUMN}")
    if "model" not in names or len(set(names)) != len(names):
        raise ValueError(f"{path}: the header needs one 'model' column and no repeated column")
    return names


def _csv_row(names: list[str], row: list[str], where: str) -> ModelResults:
    cells = dict(zip(names, row))
    model = cells["model"].strip()
    if not model:
        raise ValueError(f"{where}: empty model name")
    result = ModelResults(model, {})
    for column in (name for name in names if name != "model"):
        place = f"{where} (model {model!r}), column {column!r}"
        value = _parse_cell(cells[column], place)
        if value is not None and column == PARAMS_COLUMN:
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{place}: {value} is not a positive number of parameters (M)")
            result.params_m = value
        elif value is not None:
            result.metrics[column] = check_metric(column, value, place)
            result.sources[column] = where
    return result


def read_csv(path: str | Path) -> list[ModelResults]:
    """Models of a results CSV; errors name the line and column."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, strict=True)
            rows = [(reader.line_num, row) for row in reader]  # line_num: line where the row ends
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: malformed CSV ({err})") from None
    if not rows:
        raise ValueError(f"{path}: empty CSV, expected a header 'model,{','.join(METRICS)}'")
    names = _csv_header(rows[0][1], path)
    models: list[ModelResults] = []
    for line, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise ValueError(f"{path}, line {line}: {len(row)} cells, the header has {len(names)}")
        models.append(_csv_row(names, row, f"{path}, line {line}"))
    repeated = sorted({m.name for m in models if [n.name for n in models].count(m.name) > 1})
    if repeated:
        raise ValueError(f"{path}: model(s) {repeated} appear on several lines")
    if not models:
        raise ValueError(f"{path}: no model rows under the header")
    return models
