"""(b) and (c) of superb/results.py: s3prl experiment directories, and one model from several."""

from __future__ import annotations

import json
from pathlib import Path

from pruned_upstream.errors import CheckpointError
from pruned_upstream.small_files import read_small_text, read_yaml_file
from pruned_upstream.superb.records import RESULT_JSON, Experiment, ModelResults, check_metric
from pruned_upstream.superb.references import TASKS
from pruned_upstream.superb.s3prl_logs import TASK_METRIC_NAMES, TASK_SOURCES

# s3prl 0.4.18 `-d` names (s3prl/downstream/<name>/) -> SUPERB task.
DOWNSTREAM_TASKS = {
    "speech_commands": "KS", "fluent_commands": "IC", "voxceleb1": "SID", "emotion": "ER",
    "asr": "ASR", "quesst14_dtw": "QbE", "sv_voxceleb1": "ASV", "diarization": "SD",
}
# `-d ctc` serves PR and SF; the config's downstream_expert.corpus.name tells which
# (s3prl/downstream/ctc/libriphone.yaml, snips.yaml).
CTC_CORPUS_TASKS = {"libriphone": "PR", "snips": "SF"}



def _latest_yaml(expdir: Path, pattern: str) -> dict:
    """The newest of s3prl's `args_<date>.yaml` / `config_<date>.yaml` (names sort by date).

    Read only as a regular file of at most 1 MB (a FIFO or a link to /dev/zero would be read
    forever), as safe YAML without aliases (a few hundred bytes of nested aliases expand to
    gigabytes): small_files."""
    files = sorted(expdir.glob(pattern))
    if not files:
        return {}
    try:
        content = read_yaml_file(files[-1])
    except CheckpointError as err:
        raise CheckpointError(files[-1], f"unreadable YAML ({err.problem})") from None
    if not isinstance(content, dict):
        raise CheckpointError(files[-1], f"expected a YAML mapping, got {type(content).__name__}")
    return content


def _nested(config: dict, *keys: str):
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def task_of_downstream(args: dict, config: dict, expdir: Path) -> str:
    """SUPERB task of an expdir from its args (`downstream`) and config YAML."""
    downstream = args.get("downstream")
    if not isinstance(downstream, str):  # a list or a mapping would not even be a dict key
        raise ValueError(f"{expdir}: the args YAML's downstream must be a name (e.g. speech_commands), "
                         f"got {_short(downstream)}")
    if downstream in DOWNSTREAM_TASKS:
        return DOWNSTREAM_TASKS[downstream]
    if downstream == "ctc":
        corpus = _nested(config, "downstream_expert", "corpus", "name")
        corpus = corpus or Path(str(args.get("config", ""))).stem
        if isinstance(corpus, str) and corpus in CTC_CORPUS_TASKS:
            return CTC_CORPUS_TASKS[corpus]
        raise ValueError(
            f"{expdir}: ctc corpus {_short(corpus)} is neither of {sorted(CTC_CORPUS_TASKS)}")
    if downstream == "phone_linear":
        raise ValueError(f"{expdir}: phone_linear logs frame accuracy, not SUPERB's PER; "
                         "SUPERB PR is `-d ctc` with the libriphone config")
    raise ValueError(f"{expdir}: s3prl downstream {_short(downstream)} is not a SUPERB task; known: "
                     f"{sorted(DOWNSTREAM_TASKS) + ['ctc']}")


def _short(value) -> str:
    text = repr(value)
    return text[:80] + (" ..." if len(text) > 80 else "")


def _key(value, name: str, expdir: Path):
    """A value that selects or groups expdirs (a fold, a layer): a plain scalar, or None."""
    if value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{expdir}: {name} must be a plain value (a name or a number), got {_short(value)}")


def _json_metrics(path: Path, task: str, value, unit: str) -> dict[str, float]:
    scale = {"percent": 1.0, "fraction": 100.0}.get(unit) if isinstance(unit, str) else None
    if not isinstance(task, str) or task not in TASKS or scale is None:
        raise CheckpointError(path, f"task {task!r} must be one of {list(TASKS)} and unit {unit!r} "
                                    "'percent' or 'fraction'")
    names = TASK_METRIC_NAMES[task]
    values = value if isinstance(value, dict) else {names[0]: value}
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300 for v in values.values())
    if set(values) - set(names) or not numbers:
        raise CheckpointError(path, f"metric for {task} must be a number or a mapping of {names}")
    return {name: check_metric(name, scale * v, str(path)) for name, v in values.items()}


def read_result_json(path: Path) -> tuple[str, dict[str, float]]:
    """Our `superb_result.json`: {"task": T, "metric": value} (METRICS units;
    "unit": "fraction" multiplies by 100); SF takes {"SF-F1": f, "SF-CER": c}."""
    try:
        content = json.loads(read_small_text(path))
    except CheckpointError:  # not a regular file, too large, not UTF-8
        raise
    except (ValueError, OSError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(path, f"invalid JSON ({err})") from None
    if not isinstance(content, dict) or "task" not in content or "metric" not in content:
        raise CheckpointError(path, "expected {\"task\": ..., \"metric\": ...}")
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
    layer = _key(args.get("upstream_layer_selection"), "upstream_layer_selection", expdir)
    ckpt = args.get("upstream_ckpt") if args else None
    fold = _key(_nested(config, "downstream_expert", "datarc", "test_fold"), "downstream_expert.datarc.test_fold",
                expdir)
    fold = None if fold is None else str(fold)  # folds are sorted and joined as names
    return Experiment(expdir, task, metrics, sources, str(args.get("evaluate_split", "test")) if args else "test",
                      fold, layer, str(ckpt) if ckpt else None)


# ------------------------------------------- one model from its expdirs (c)

def _mean_over_folds(runs: list[Experiment]) -> Experiment:
    """ER: SUPERB averages the test accuracy of the IEMOCAP folds (s3prl downstream/docs/superb.md)."""
    folds = [run.fold for run in runs]
    if None in folds or len(set(folds)) != len(folds):
        raise ValueError(f"ER expdirs {[str(r.path) for r in runs]} need distinct "
                         f"downstream_expert.datarc.test_fold values, got {folds}")
    mean = sum(run.metrics["ER"] for run in runs) / len(runs)
    where = f"mean of folds {', '.join(sorted(folds))}: " + "; ".join(r.sources["ER"] for r in runs)
    return Experiment(runs[0].path, "ER", {"ER": mean}, {"ER": where})


def _best_dev_layer(runs: list[Experiment]) -> Experiment:
    """QbE: the test run of the layer with the best dev MTWV (s3prl downstream/docs/superb.md)."""
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
