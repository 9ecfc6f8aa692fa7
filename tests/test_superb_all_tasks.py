"""All ten SUPERB tasks on the small-data bundle (pruned_upstream/superb_data/bundle.py).

The fast tests check the bundle alone: its variables are exactly the data
variables of scripts/run_superb.sh, every task passes the preflight with the
bundle's overrides, the builders' KS and IC layouts are what s3prl reads, and
the build is deterministic and reused. The slow test runs the script for all
ten tasks on a tiny WavLM, as a user would, then checks the score, the
ranges, the QbE scorer mark, that s3prl's package is unchanged, and that a
second run only re-scores. Measured times: docs/superb_small_data.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from pruned_upstream.s3prl_plugin.third_party import configured_dscore
from pruned_upstream.s3prl_plugin import preflight as pf
from pruned_upstream.s3prl_plugin.tasks import TASKS as TASK_SPECS
from pruned_upstream.superb_data.bundle import (STAMP, TASKS, Paths, is_complete, make_small_superb, run_env,
                                                task_overrides)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_superb.sh"
STEPS = 4
SCRIPT_KNOBS = ("DRY_RUN", "STEPS_OVERRIDE", "QBE_LAYERS", "ER_FOLDS", "MODEL_NAME", "SUPERB_OVERRIDE", "PRUNED_UPSTREAM",
                "PYTHON")
# metric -> (lowest, highest) value the score's reader may give (percent; QbE: MTWV x 100, at most 100)
RANGES = {"PR": (0, math.inf), "KS": (0, 100), "IC": (0, 100), "SID": (0, 100), "ER": (0, 100),
          "ASR": (0, math.inf), "QbE": (-math.inf, 100), "SF-F1": (0, 100), "SF-CER": (0, math.inf),
          "ASV": (0, 100), "SD": (0, math.inf)}


def s3prl_root() -> Path:
    root = pf.installed_s3prl_root()
    assert root is not None, "s3prl is not installed (make install)"
    return root


def script_data_vars() -> dict[str, set[str]]:
    """scripts/run_superb.sh's DATA_VARS table: task -> variable names."""
    block = re.search(r"declare -A DATA_VARS=\((.*?)\)\n", SCRIPT.read_text(), re.S).group(1)
    return {task: set(names.strip('"').split()) for task, names in re.findall(r"\[(\w+)\]=(\"[^\"]*\"|\S+)", block)}


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, its own path written as ROOT (wav.scp names absolute paths)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes().replace(str(root).encode(), b"ROOT")).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    start = time.perf_counter()
    built = make_small_superb(tmp_path_factory.mktemp("small_superb"), seed=0, steps=STEPS)
    print(f"\nsmall SUPERB bundle built in {time.perf_counter() - start:.1f} s")
    return built


# ---------------------------------------------------------------- the bundle alone

def test_env_is_exactly_the_scripts_data_variables(bundle):
    table = script_data_vars()
    assert set(table) == set(TASKS)
    assert set(bundle.env) == set().union(*table.values()) - {"DSCORE_ROOT"}
    assert set(bundle.env) == {p.env for spec in TASK_SPECS.values() for p in spec.data_paths}
    assert all(Path(value).is_dir() and Path(value).is_absolute() for value in bundle.env.values())
    assert set(bundle.overrides) == set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_passes_the_preflight_with_the_bundle(bundle, task):
    root = s3prl_root()
    override = bundle.overrides[task]
    if task == "ER":  # what run_superb.sh adds per fold
        override += ",,config.downstream_expert.datarc.test_fold=fold3"
    config = pf.effective_config(task, root, override, environ=bundle.env)
    assert pf.preflight(task, root, config) == []
    for data in TASK_SPECS[task].data_paths:  # the data comes from the environment, not from -o
        assert str(pf.get_field(config, data.key)).startswith(bundle.env[data.env])


def test_overrides_parse_as_s3prl_parses_them(bundle):
    """s3prl's own `override` (it eval()s every value): paths stay strings, steps follow the argument."""
    from argparse import Namespace

    from s3prl.utility.helper import override

    paths = Paths(bundle.root)
    for steps in (STEPS, 1):
        for task, text in task_overrides(paths, steps).items():
            config = pf.load_task_config(task)
            override(text, Namespace(), config)
            if task == "QbE":
                assert "total_steps" not in config["runner"]
                continue
            runner = config["runner"]
            assert [runner[k] for k in ("total_steps", "eval_step", "save_step")] == [steps] * 3, task
            assert runner["gradient_accumulate_steps"] == 1
    config = pf.load_task_config("PR")
    override(bundle.overrides["PR"], Namespace(), config)
    assert config["downstream_expert"]["corpus"]["lexicon"] == [str(paths.lexicon)]
    config = pf.load_task_config("SID")
    override(bundle.overrides["SID"], Namespace(), config)
    assert config["downstream_expert"]["datarc"]["meta_data"] == str(paths.iden_split)
    with pytest.raises(ValueError, match="positive"):
        task_overrides(paths, 0)


def test_run_env_sets_every_task_override_and_extra_wins(bundle):
    env = run_env(bundle, {"DSCORE_ROOT": "/x/dscore", "SUPERB_OVERRIDE_KS": "mine"}, base={"PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["DSCORE_ROOT"] == "/x/dscore" and env["SUPERB_OVERRIDE_KS"] == "mine"
    assert all(env[f"SUPERB_OVERRIDE_{t}"] == bundle.overrides[t] for t in TASKS if t != "KS")
    assert {k: env[k] for k in bundle.env} == bundle.env
    assert (env["JOBLIB_MULTIPROCESSING"], env["OMP_NUM_THREADS"]) == ("0", "1")


def test_speech_commands_layout_is_what_s3prl_splits(bundle):
    from s3prl.downstream.speech_commands.dataset import CLASSES
    from s3prl.downstream.speech_commands.expert import split_dataset

    train, dev = split_dataset(bundle.env["SPEECH_COMMANDS_ROOT"])
    keywords = set(CLASSES[:10])
    assert {label for label, _ in train} >= keywords
    assert {label for label, _ in train} - set(CLASSES)  # other words: s3prl's _unknown_
    assert {label for label, _ in dev} >= keywords
    test_root = Path(bundle.env["SPEECH_COMMANDS_TEST_ROOT"])
    assert {p.name for p in test_root.iterdir()} == set(CLASSES)
    assert all(any((test_root / c).glob("*.wav")) for c in CLASSES)


def test_fluent_commands_layout_has_disjoint_speakers_and_train_covers_every_slot_value(bundle):
    import pandas as pd
    import soundfile as sf

    root = Path(bundle.env["FLUENT_COMMANDS_ROOT"])
    frames = {split: pd.read_csv(root / "data" / f"{split}_data.csv") for split in ("train", "valid", "test")}
    for split, frame in frames.items():
        assert list(frame.columns) == ["Unnamed: 0", "path", "speakerId", "transcription", "action", "object",
                                       "location"]
        for rel in frame["path"]:
            assert re.fullmatch(r"wavs/speakers/[A-Za-z0-9]{16}/[0-9a-f]{8}-[0-9a-f]{4}-11e9-[0-9a-f]{4}-[0-9a-f]{12}"
                                r"\.wav", rel)
            info = sf.info(str(root / rel))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        for slot in ("action", "object", "location"):  # s3prl numbers slot values from train only
            assert set(frame[slot]) <= set(frames["train"][slot])
    speakers = [set(frame["speakerId"]) for frame in frames.values()]
    assert not (speakers[0] & speakers[1]) and not (speakers[0] & speakers[2]) and not (speakers[1] & speakers[2])


def test_the_bundle_is_deterministic_and_reused(bundle, tmp_path):
    again = make_small_superb(tmp_path / "again", seed=0, steps=STEPS)
    assert not again.reused and tree_digest(again.root) == tree_digest(bundle.root)
    assert again.overrides == {t: o.replace(str(bundle.root), str(again.root)) for t, o in bundle.overrides.items()}
    stamp = again.root / STAMP
    mtime = stamp.stat().st_mtime_ns
    reused = make_small_superb(again.root, seed=0, steps=2)
    assert reused.reused and stamp.stat().st_mtime_ns == mtime
    assert "config.runner.total_steps=2" in reused.overrides["KS"]
    assert not is_complete(again.root, seed=1)  # another seed: a rebuild
    shutil.rmtree(again.env["QUESST14_ROOT"])
    assert not is_complete(again.root, seed=0)  # a corpus root is missing: a rebuild
    with pytest.raises(ValueError, match="Session"):
        make_small_superb(tmp_path / "Session1")


# ---------------------------------------------------------------- all ten tasks through the script

def dscore_root() -> str:
    """DSCORE_ROOT from the environment, else the copy `make install` unpacks into the venv's src/."""
    value = configured_dscore()
    if value is None:
        pytest.fail("dscore not found: set DSCORE_ROOT to a checkout of github.com/ftshijt/dscore or a .tar.gz of "
                    f"it (`make install` unpacks it into {sys.prefix}/src/dscore-*); SD cannot be scored without it")
    return value


def package_hashes(package: Path) -> dict[str, str]:
    """sha256 of s3prl's package files, without __pycache__ (the runner moves s3prl's data caches into the
    experiment directories: nothing else is excluded)."""
    return {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(package.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def run_script(ckpt: Path, out: Path, env: dict) -> tuple[int, str, dict[str, float], float]:
    """Run the script; (exit status, output, seconds per task from its notes, total seconds)."""
    start, marks, lines = time.perf_counter(), [], []
    proc = subprocess.Popen(["bash", str(SCRIPT), str(ckpt), str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        lines.append(line)
        note = re.match(r"\[run_superb\] (?:(\w+): (?:start|result present)|(scoring) )", line)
        if note:
            marks.append((note.group(1) or "score", time.perf_counter() - start))
    code = proc.wait(timeout=900)
    total = time.perf_counter() - start
    marks.append(("end", total))
    times = {name: later - at for (name, at), (_, later) in zip(marks, marks[1:])}
    return code, "".join(lines), times, total


@pytest.fixture(scope="module")
def ten_tasks(bundle, tmp_path_factory):
    import s3prl
    from s3prl_fixtures import make_tiny_wavlm

    work = tmp_path_factory.mktemp("superb_all")
    ckpt, out = make_tiny_wavlm(work / "tiny.pt"), work / "small"
    base = {k: v for k, v in os.environ.items() if not k.startswith(SCRIPT_KNOBS) and k not in bundle.env}
    # Through the fork server (commands/fork_server.py): the same commands, torch and s3prl imported once
    # instead of ~34 times (about 3 minutes less here); tests/test_fork_server.py tests the server itself.
    from pruned_upstream.demo_superb import fork_server

    package = Path(s3prl.__file__).resolve().parent
    before = package_hashes(package)
    with fork_server(work) as server:
        env = run_env(bundle, {"DSCORE_ROOT": dscore_root(), "PYTHON": sys.executable,
                               "PRUNED_UPSTREAM": f"{sys.executable} -m pruned_upstream.commands.fork_client",
                               "PRUNED_UPSTREAM_FORK_SERVER": server}, base=base)
        first = run_script(ckpt, out, env)
        after = package_hashes(package)
        score = (out / "superb_score.json").read_text() if (out / "superb_score.json").is_file() else None
        second = run_script(ckpt, out, env)
    times = {"first": first[2], "first_total": first[3], "second_total": second[3]}
    (work / "task_times.json").write_text(json.dumps(times, indent=1))
    print("\nwall seconds per task (first run): "
          + ", ".join(f"{t} {s:.1f}" for t, s in first[2].items()) + f"; total {first[3]:.1f}; second run {second[3]:.1f}")
    return {"out": out, "first": first, "second": second, "before": before, "after": after, "score": score}


@pytest.mark.slow
def test_all_ten_tasks_run_complete_and_score(ten_tasks):
    from pruned_upstream.superb.records import check_metric
    from pruned_upstream.superb.results import read_results
    from pruned_upstream.superb.s3prl_logs import is_our_mtwv
    from pruned_upstream.superb.score import superb_score

    code, output, times, _ = ten_tasks["first"]
    assert code == 0, output[-6000:]
    summary = re.findall(r"^\[run_superb\] complete: (.*); skipped \(data not set\): (.*); failed: (.*)$", output, re.M)
    assert summary == [(" ".join(TASKS), "none", "none")], output[-3000:]
    assert list(times) == [*TASKS, "score"]
    out = ten_tasks["out"]
    [reported] = json.loads(ten_tasks["score"])
    assert reported["partial"] is False and reported["missing"] == [] and set(reported["points"]) == set(TASKS)
    [model] = read_results(out / "scored" / out.name)  # what the script scored
    expected = superb_score(model.metrics)  # every task present, or this raises
    assert reported["score"] == pytest.approx(expected.score)
    assert reported["points"] == pytest.approx(expected.points)
    for metric, value in model.metrics.items():
        check_metric(metric, value, model.sources[metric])  # finite, not a negative error, no accuracy above 100
        low, high = RANGES[metric]
        assert low <= value <= high, (metric, value, model.sources[metric])
    assert set(model.metrics) == set(RANGES)
    assert is_our_mtwv(model.sources["QbE"]) and reported["qbe_scorer"] == "ours"
    assert "mean of folds fold1, fold2, fold3, fold4, fold5" in model.sources["ER"]
    # `submit --allow-missing` on the real outputs (only ASR's LM decoding is not run), and s3prl's own
    # submit.py, unchanged, on the directories the card names packs the same members with the same bytes
    sub = out.parent / "submission"
    proc = subprocess.run([sys.executable, "-m", "pruned_upstream.cli", "submit", str(out), "--allow-missing",
                           "--out", str(sub)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((sub / "model_card.json").read_text())
    assert list(card["submission"]["missing"]) == ["asr_with_lm"], card["submission"]["missing"]
    expdirs = [f"--{arg}={(sub / path).resolve()}" for arg, path in card["submission"]["expdirs"].items()]
    theirs = subprocess.run([sys.executable, str(s3prl_root() / "submit" / "submit.py"), *expdirs, "--output_dir",
                             str(out.parent / "s3prl_submission")], capture_output=True, text=True, timeout=300)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    zips = []
    for path in (sub / "predict.zip", out.parent / "s3prl_submission" / "predict.zip"):
        with zipfile.ZipFile(path) as z:
            zips.append({info.filename: z.read(info) for info in z.infolist()})
    assert zips[0] == zips[1] and len({name.split("/")[1] for name in zips[0] if name.count("/") >= 2}) == 14
    assert card["metrics"] == pytest.approx(model.metrics)


@pytest.mark.slow
def test_s3prl_package_is_unchanged(ten_tasks):
    assert ten_tasks["after"] == ten_tasks["before"]


@pytest.mark.slow
def test_a_second_run_only_rescores(ten_tasks):
    code, output, _, total = ten_tasks["second"]
    assert code == 0, output[-3000:]
    assert all(f"[run_superb] {task}: result present, skipped" in output for task in TASKS), output
    assert "start" not in " ".join(re.findall(r"^\[run_superb\] \w+: \w+", output, re.M))
    assert (ten_tasks["out"] / "superb_score.json").read_text() == ten_tasks["score"]
    assert total < 30, f"a run with every result present took {total:.1f} s"
