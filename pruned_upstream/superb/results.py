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

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from pruned_upstream.superb.references import METRIC_INFO, METRICS, TASKS

RESULT_JSON = "superb_result.json"   # {"task": "SD", "metric": 6.08}, written by our scripts
STDOUT_LOG = "stdout.log"            # the runner's standard output, tee'd by `superb`
QBE_SCORE_LOG = "score_twv.log"      # stdout of QUESST14's scoring/score-TWV-Cnxe.sh
PARAMS_COLUMN = "params_M"

# s3prl 0.4.18 `-d` names (s3prl/downstream/<name>/) -> SUPERB task.
DOWNSTREAM_TASKS = {
    "speech_commands": "KS", "fluent_commands": "IC", "voxceleb1": "SID", "emotion": "ER",
    "asr": "ASR", "quesst14_dtw": "QbE", "sv_voxceleb1": "ASV", "diarization": "SD",
}
# `-d ctc` serves PR and SF; the config's downstream_expert.corpus.name tells which
# (s3prl/downstream/ctc/libriphone.yaml, snips.yaml).
CTC_CORPUS_TASKS = {"libriphone": "PR", "snips": "SF"}


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
    """`value` as a float, refusing NaN/inf, negative errors and accuracies outside 0..100."""
    if not math.isfinite(value):
        raise ValueError(f"{where}: {metric} = {value} is not a finite number")
    higher = METRIC_INFO[metric][1]
    if metric != "QbE" and (value < 0 or (higher and value > 100)):
        raise ValueError(f"{where}: {metric} = {value} is outside the range of a percentage")
    return value


# ---------------------------------------------------------------- CSV (a)

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


# ------------------------------------------------------ s3prl log readers

def _matches(path: Path, pattern: re.Pattern) -> list[tuple[str, re.Match]]:
    """(file:line, match) for each line of `path` matching `pattern`."""
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()  # also splits tqdm's \r
    return [(f"{path}:{n}", m) for n, line in enumerate(lines, 1)
            if (m := pattern.search(line.strip()))]


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None


_LOG_TEST = re.compile(r"^test at step (\d+): (\S+)$")
_LOG_BEST_DEV = re.compile(r"^New best on dev at step (\d+): ")


def read_log_accuracy(expdir: Path) -> tuple[float, str] | None:
    """KS/IC/SID/ER: `log.log` (percent = fraction x 100).

    s3prl's experts append `test at step N: <acc>` (speech_commands,
    fluent_commands, voxceleb1, emotion `log_records`). Chosen line: the last
    one from `-m evaluate` (it logs step 0); otherwise the test line at the
    step of the last `New best on dev at step N` (the dev-best checkpoint);
    otherwise the last test line.
    """
    tests = _matches(expdir / "log.log", _LOG_TEST)
    if not tests:
        return None
    best = _matches(expdir / "log.log", _LOG_BEST_DEV)
    chosen = [t for t in tests if t[1].group(1) == "0"]
    if not chosen and best:
        chosen = [t for t in tests if t[1].group(1) == best[-1][1].group(1)]
    where, match = (chosen or tests)[-1]
    return 100.0 * _number(match.group(2), where), where


def _last_value(path: Path, pattern: str, scale: float) -> tuple[float, str] | None:
    found = _matches(path, re.compile(pattern))
    if not found:
        return None
    where, match = found[-1]
    return scale * _number(match.group(1), where), where


def read_asv_eer(expdir: Path) -> tuple[float, str] | None:
    """ASV: the lowest `sv-voxceleb1/test-EER: <eer>` over `states-*/log.txt`
    (written by s3prl's sv_voxceleb1/test_expdir.sh), else the last one in
    stdout.log; EER fraction x 100."""
    pattern = re.compile(r"sv-voxceleb1/test-EER: (\S+)$")
    found = [m for log in sorted(expdir.glob("states-*/log.txt")) for m in _matches(log, pattern)]
    found = found or _matches(expdir / STDOUT_LOG, pattern)[-1:]
    if not found:
        return None
    values = [(100.0 * _number(m.group(1), where), where) for where, m in found]
    return min(values)


def read_sd_der(expdir: Path) -> tuple[float, str] | None:
    """SD: the lowest `*** OVERALL ***` DER (percent, dscore's 2nd column) over
    `scoring/result_th*_med*`, the files s3prl's diarization/score.sh writes."""
    pattern = re.compile(r"\*\*\* OVERALL \*\*\*\s+(\S+)")
    files = sorted(expdir.glob("scoring/result_th*_med*"))
    found = [m for file in files for m in _matches(file, pattern)]
    if not found:
        return None
    return min((_number(m.group(1), where), where) for where, m in found)


def read_qbe_mtwv(expdir: Path) -> tuple[float, str] | None:
    """QbE: `actTWV: a maxTWV: b Threshold: c` printed by QUESST14's
    score-TWV-Cnxe.sh (the line s3prl's problem/superb/qbe.py parses), saved as
    score_twv.log, else found in stdout.log; MTWV x 100."""
    pattern = r"actTWV:\s*\S+\s+maxTWV:\s*(\S+)\s+Threshold:"
    return (_last_value(expdir / QBE_SCORE_LOG, pattern, 100.0)
            or _last_value(expdir / STDOUT_LOG, pattern, 100.0))


def _stdout(pattern: str, scale: float) -> Callable[[Path], tuple[float, str] | None]:
    return lambda expdir: _last_value(expdir / STDOUT_LOG, pattern, scale)


# metric -> (reader, what the reader looks for: used in error messages).
# PR (ctc `per`), SF (ctc `slot_type_f1`, `slot_value_cer`) are fractions;
# ASR's wer is already percent (asr/expert.py: 100.0 * errors / words).
TASK_SOURCES: dict[str, tuple[Callable[[Path], tuple[float, str] | None], str]] = {
    "PR": (_stdout(r"^test per: (\S+)$", 100.0), f"{STDOUT_LOG}: 'test per: X'"),
    "KS": (read_log_accuracy, "log.log: 'test at step N: X'"),
    "IC": (read_log_accuracy, "log.log: 'test at step N: X'"),
    "SID": (read_log_accuracy, "log.log: 'test at step N: X'"),
    "ER": (read_log_accuracy, "log.log: 'test at step N: X'"),
    "ASR": (_stdout(r"^test-clean wer: (\S+)$", 1.0), f"{STDOUT_LOG}: 'test-clean wer: X'"),
    "QbE": (read_qbe_mtwv, f"{QBE_SCORE_LOG} or {STDOUT_LOG}: 'actTWV: a maxTWV: b Threshold: c'"),
    "SF-F1": (_stdout(r"^test slot_type_f1: (\S+)$", 100.0),
              f"{STDOUT_LOG}: 'test slot_type_f1: X'"),
    "SF-CER": (_stdout(r"^test slot_value_cer: (\S+)$", 100.0),
               f"{STDOUT_LOG}: 'test slot_value_cer: X'"),
    "ASV": (read_asv_eer, f"states-*/log.txt or {STDOUT_LOG}: 'sv-voxceleb1/test-EER: X'"),
    "SD": (read_sd_der,
           "scoring/result_th*_med*: '*** OVERALL *** DER' (run s3prl's diarization/score.sh)"),
}
TASK_METRIC_NAMES = {task: (task,) for task in TASKS} | {"SF": ("SF-F1", "SF-CER")}


# ------------------------------------------------------------ expdirs (b)

def _latest_yaml(expdir: Path, pattern: str) -> dict:
    """The newest of s3prl's `args_<date>.yaml` / `config_<date>.yaml` (names sort by date)."""
    files = sorted(expdir.glob(pattern))
    if not files:
        return {}
    try:
        content = yaml.safe_load(files[-1].read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{files[-1]}: unreadable YAML ({err})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{files[-1]}: expected a YAML mapping, got {type(content).__name__}")
    return content


def _nested(config: dict, *keys: str):
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def task_of_downstream(args: dict, config: dict, expdir: Path) -> str:
    """SUPERB task of an expdir from its args (`downstream`) and config YAML."""
    downstream = args.get("downstream")
    if downstream in DOWNSTREAM_TASKS:
        return DOWNSTREAM_TASKS[downstream]
    if downstream == "ctc":
        corpus = _nested(config, "downstream_expert", "corpus", "name")
        corpus = corpus or Path(str(args.get("config", ""))).stem
        if corpus in CTC_CORPUS_TASKS:
            return CTC_CORPUS_TASKS[corpus]
        raise ValueError(
            f"{expdir}: ctc corpus {corpus!r} is neither of {sorted(CTC_CORPUS_TASKS)}")
    if downstream == "phone_linear":
        raise ValueError(f"{expdir}: phone_linear logs frame accuracy, not SUPERB's PER; "
                         "SUPERB PR is `-d ctc` with the libriphone config")
    raise ValueError(f"{expdir}: s3prl downstream {downstream!r} is not a SUPERB task; known: "
                     f"{sorted(DOWNSTREAM_TASKS) + ['ctc']}")


def _json_metrics(path: Path, task: str, value, unit: str) -> dict[str, float]:
    scale = {"percent": 1.0, "fraction": 100.0}.get(unit)
    if task not in TASKS or scale is None:
        raise ValueError(f"{path}: task {task!r} must be one of {list(TASKS)} and unit {unit!r} "
                         "'percent' or 'fraction'")
    names = TASK_METRIC_NAMES[task]
    values = value if isinstance(value, dict) else {names[0]: value}
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values())
    if set(values) - set(names) or not numbers:
        raise ValueError(f"{path}: metric for {task} must be a number or a mapping of {names}")
    return {name: check_metric(name, scale * v, str(path)) for name, v in values.items()}


def read_result_json(path: Path) -> tuple[str, dict[str, float]]:
    """Our `superb_result.json`: {"task": T, "metric": value} (METRICS units;
    "unit": "fraction" multiplies by 100); SF takes {"SF-F1": f, "SF-CER": c}."""
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(content, dict) or "task" not in content or "metric" not in content:
        raise ValueError(f"{path}: expected {{\"task\": ..., \"metric\": ...}}")
    task = content["task"]
    return task, _json_metrics(path, task, content["metric"], content.get("unit", "percent"))


def _read_logs(expdir: Path, task: str) -> tuple[dict[str, float], dict[str, str]]:
    metrics, sources, looked = {}, {}, []
    for name in TASK_METRIC_NAMES[task]:
        reader, description = TASK_SOURCES[name]
        found = reader(expdir)
        if found is None:
            looked.append(description)
            continue
        metrics[name] = check_metric(name, found[0], found[1])
        sources[name] = found[1]
    if looked:
        raise ValueError(f"{expdir}: no {task} result; looked for {RESULT_JSON} and "
                         + "; ".join(looked))
    return metrics, sources


def is_expdir(path: Path) -> bool:
    return path.is_dir() and (any(path.glob("args_*.yaml")) or (path / RESULT_JSON).is_file())


def read_expdir(expdir: str | Path) -> Experiment:
    """Task and metrics of one s3prl experiment directory."""
    expdir = Path(expdir)
    args, config = _latest_yaml(expdir, "args_*.yaml"), _latest_yaml(expdir, "config_*.yaml")
    task = task_of_downstream(args, config, expdir) if args else None
    if (expdir / RESULT_JSON).is_file():
        json_task, metrics = read_result_json(expdir / RESULT_JSON)
        if task not in (None, json_task):
            raise ValueError(f"{expdir}: {RESULT_JSON} says {json_task}, the args YAML {task}")
        task, sources = json_task, {name: str(expdir / RESULT_JSON) for name in metrics}
    elif task is None:
        raise ValueError(f"{expdir}: no args_*.yaml nor {RESULT_JSON}: not an s3prl expdir")
    else:
        metrics, sources = _read_logs(expdir, task)
    layer = args.get("upstream_layer_selection")
    ckpt = args.get("upstream_ckpt") if args else None
    return Experiment(expdir, task, metrics, sources, str(args.get("evaluate_split", "test")) if args else "test",
                      _nested(config, "downstream_expert", "datarc", "test_fold"), layer,
                      str(ckpt) if ckpt else None)


# ------------------------------------------- one model from its expdirs (c)

def _mean_over_folds(runs: list[Experiment]) -> Experiment:
    """ER: SUPERB averages the test accuracy of the IEMOCAP folds (s3prl docs/superb.md)."""
    folds = [run.fold for run in runs]
    if None in folds or len(set(folds)) != len(folds):
        raise ValueError(f"ER expdirs {[str(r.path) for r in runs]} need distinct "
                         f"downstream_expert.datarc.test_fold values, got {folds}")
    mean = sum(run.metrics["ER"] for run in runs) / len(runs)
    where = f"mean of folds {', '.join(sorted(folds))}: " + "; ".join(r.sources["ER"] for r in runs)
    return Experiment(runs[0].path, "ER", {"ER": mean}, {"ER": where})


def _best_dev_layer(runs: list[Experiment]) -> Experiment:
    """QbE: the test run of the layer with the best dev MTWV (s3prl docs/superb.md)."""
    tests = [run for run in runs if run.split == "test"]
    dev = {run.layer: run.metrics["QbE"] for run in runs if run.split == "dev"}
    if not tests:
        raise ValueError(f"QbE: only {sorted(r.split for r in runs)} expdirs "
                         f"{[str(r.path) for r in runs]}; SUPERB reports the test split")
    if len(tests) == 1:
        return tests[0]
    candidates = [run for run in tests if run.layer in dev]
    if not candidates:
        raise ValueError(f"QbE: {len(tests)} test expdirs {[str(r.path) for r in tests]} and no "
                         "dev expdir of the same layer to choose between them")
    return max(candidates, key=lambda run: dev[run.layer])


def model_from_expdirs(name: str, expdirs: list[Path]) -> ModelResults:
    """One model from its expdirs: one per task (ER: one per fold; QbE: per layer and split)."""
    by_task: dict[str, list[Experiment]] = {}
    for expdir in expdirs:
        run = read_expdir(expdir)
        by_task.setdefault(run.task, []).append(run)
    ckpts = {run.upstream_ckpt for runs in by_task.values() for run in runs}
    result = ModelResults(name, {}, upstream_ckpt=ckpts.pop() if len(ckpts) == 1 else None)
    for task, runs in by_task.items():
        if task == "ER" and len(runs) > 1:
            runs = [_mean_over_folds(runs)]
        elif task == "QbE":
            runs = [_best_dev_layer(runs)]
        if len(runs) > 1:
            paths = [str(run.path) for run in runs]
            raise ValueError(f"model {name!r}: several {task} expdirs {paths}")
        result.metrics.update(runs[0].metrics)
        result.sources.update(runs[0].sources)
    return result


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
