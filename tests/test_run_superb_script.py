"""scripts/run_superb.sh: the ten SUPERB tasks for one upstream (issue 5).

Dry runs (DRY_RUN=1, fake data variables) check the commands the script would
run against the task table of ``pruned_upstream/s3prl_plugin/tasks.py``; one
real run trains and tests KS on the tiny Speech Commands layout of
``s3prl_fixtures`` through ``python -m pruned_upstream.cli`` and ends with a
partial SUPERB score.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from s3prl_fixtures import make_speech_commands, make_tiny_wavlm

from pruned_upstream.s3prl_plugin.tasks import TASKS
from pruned_upstream.superb.results import read_expdir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_superb.sh"
BEST = {"ASR": "dev-clean-best.ckpt", "SD": "best-states-dev.ckpt"}  # s3prl experts' log_records
DATA_VARS = sorted({p.env for spec in TASKS.values() for p in spec.data_paths} | {"DSCORE_ROOT"})
SCRIPT_VARS = ("PRUNED_UPSTREAM", "PYTHON", "DRY_RUN", "STEPS_OVERRIDE", "QBE_LAYERS", "MODEL_NAME", "SUPERB_OVERRIDE",
               "ER_FOLDS")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DATA_VARS and not k.startswith(SCRIPT_VARS)}
    return {**env, **extra}


def run_script(args: list, env: dict, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def commands(stdout: str) -> list[list[str]]:
    """The commands a dry run printed ("+ cmd args [> file]"), as argv lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def superb_runs(cmds: list[list[str]], mode: str) -> list[list[str]]:
    return [c for c in cmds if c[1:2] == ["superb"] and option(c, "-m") == mode]


@pytest.fixture
def dry(tmp_path):
    """A fake checkpoint, every data variable set, DRY_RUN=1."""
    (tmp_path / "dscore").mkdir()
    (tmp_path / "dscore" / "score.py").write_text("")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    data = {var: str(tmp_path / "data" / var.lower()) for var in DATA_VARS} | {"DSCORE_ROOT": str(tmp_path / "dscore")}
    env = clean_env(DRY_RUN="1", PRUNED_UPSTREAM="/opt/fake/pruned-upstream", PYTHON=sys.executable,
                    QBE_LAYERS="0,1", STEPS_OVERRIDE="7", **data)
    return ckpt, tmp_path / "out", env


def test_dry_run_prints_every_task(dry):
    ckpt, out, env = dry
    proc = run_script([ckpt, out], env)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    trains, evals = superb_runs(cmds, "train"), superb_runs(cmds, "evaluate")
    trained = {option(c, "-p"): c for c in trains}
    for key, spec in TASKS.items():
        if key == "QbE":
            continue  # no training
        dirs = [out / f"ER_fold{k}" for k in range(1, 6)] if key == "ER" else [out / key]
        for expdir in dirs:
            train = trained[str(expdir)]
            assert option(train, "-d") == spec.downstream and option(train, "-u") == "pruned_wavlm_local"
            assert option(train, "-c") == str(REPO / "downstream_configs" / spec.config)
            assert option(train, "-k") == str(ckpt) and "config.runner.total_steps=7" in option(train, "-o")
            if key != "ASV":
                test = [c for c in evals if option(c, "-e") == str(expdir / BEST.get(key, "dev-best.ckpt"))]
                assert len(test) == 1 and option(test[0], "-t") == spec.test_split
    assert len(trains) == 13  # PR KS IC SID ASR SF ASV SD + 5 ER folds
    folds = [option(trained[str(out / f"ER_fold{k}")], "-o").split(",,")[-1] for k in range(1, 6)]
    assert folds == [f"config.downstream_expert.datarc.test_fold='fold{k}'" for k in range(1, 6)]
    asv = [c for c in evals if option(c, "-e") == str(out / "ASV" / "states-N.ckpt")]
    assert option(asv[0], "-o") == f"args.expdir='{out}/ASV/states-N'" and asv[0][-2:] == [">", f"{out}/ASV/states-N/log.txt"]
    qbe = [(option(c, "-l"), option(c, "-t"), option(c, "-p")) for c in evals if option(c, "-d") == "quesst14_dtw"]
    assert qbe == [(layer, split, f"{out}/QbE_{split}_layer{layer}") for layer in "01" for split in ("dev", "test")]
    # no official scorer under the (fake) QUESST14_ROOT: ours, per expdir, against the split's ground truth
    mtwv = [c[3:] for c in cmds if c[1:3] == ["superb-step", "mtwv"]]
    truth = {"dev": "groundtruth_quesst14_dev", "test": "groundtruth_quesst14_eval"}
    assert mtwv == [[f"{out}/QbE_{split}_layer{layer}", f"{env['QUESST14_ROOT']}/scoring/{truth[split]}", "-10"]
                    for layer in "01" for split in ("dev", "test")]
    assert not [c for c in cmds if "score-TWV-Cnxe.sh" in c]
    # SD: score.sh's grid (make_rttm.py + dscore) in one step, on the test set's reference RTTM
    sd = [c[3:] for c in cmds if c[1:3] == ["superb-step", "sd-score"]]
    assert sd == [[f"{out}/SD", env["LIBRI2MIX_SD_DATA"] + "/test"]]
    scores = [c for c in cmds if c[1:2] == ["score"]]
    assert [c[2:] for c in scores] == [[f"{out}/scored/out", "--allow-missing"],
                                       [f"{out}/scored/out", "--allow-missing", "--json", ">", f"{out}/superb_score.json"]]
    assert not out.exists()  # a dry run writes nothing


def test_unset_data_variables_are_named_and_their_tasks_skipped(dry):
    ckpt, out, env = dry
    env = {k: v for k, v in env.items() if k not in DATA_VARS}
    proc = run_script([ckpt, out, "PR", "ks", "SD"], env)
    assert proc.returncode == 0, proc.stderr
    assert commands(proc.stdout) == []
    for key in ("PR", "KS", "SD"):
        names = [p.env for p in TASKS[key].data_paths]
        names = list(dict.fromkeys(names + (["DSCORE_ROOT"] if key == "SD" else [])))
        assert f"skip {key}: data not set: {' '.join(names)} " in proc.stdout
    assert "skipped (data not set): PR KS SD" in proc.stdout


def test_unknown_task_and_bad_steps_are_usage_errors(dry):
    ckpt, out, env = dry
    assert run_script([ckpt, out, "XYZ"], env).returncode == 2
    proc = run_script([ckpt, out, "KS"], {**env, "STEPS_OVERRIDE": "ten"})
    assert proc.returncode == 2 and "STEPS_OVERRIDE='ten'" in proc.stderr


def write_args(expdir: Path, downstream: str) -> None:
    expdir.mkdir(parents=True, exist_ok=True)
    (expdir / "args_2024-01-01-00-00-00.yaml").write_text(yaml.safe_dump({"downstream": downstream}))


def test_existing_results_are_skipped_and_runs_resume(dry):
    ckpt, out, env = dry
    write_args(out / "KS", "speech_commands")
    (out / "KS" / "log.log").write_text("test at step 4: 0.5\ntest at step 0: 0.9\n")
    write_args(out / "ER_fold1", "emotion")
    (out / "ER_fold1" / "log.log").write_text("test at step 0: 0.6\n")
    write_args(out / "ASV", "sv_voxceleb1")
    for step in (10000, 20000):
        (out / "ASV" / f"states-{step}.ckpt").write_bytes(b"")
    (out / "ASV" / "train.done").write_text("")
    (out / "ASV" / "states-10000").mkdir()
    (out / "ASV" / "states-10000" / "log.txt").write_text("sv-voxceleb1/test-EER: 0.05\n")
    (out / "IC").mkdir()
    (out / "IC" / "states-3.ckpt").write_bytes(b"")  # interrupted training
    (out / "SD").mkdir()
    (out / "SD" / "superb_result.json").write_text(json.dumps({"task": "SD", "metric": 6.1}))
    # the fake results are the ones pruned-upstream score reads
    assert read_expdir(out / "KS").metrics == {"KS": 90.0}
    assert read_expdir(out / "ASV").metrics == {"ASV": 5.0}

    proc = run_script([ckpt, out, "KS", "IC", "ER", "ASV", "SD"], env)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    assert "KS: result present, skipped" in proc.stdout and "SD: result present, skipped" in proc.stdout
    targets = [Path(option(c, "-p") or option(c, "-e")) for c in superb_runs(cmds, "train") + superb_runs(cmds, "evaluate")]
    assert not [t for t in targets if {"KS", "SD", "ER_fold1"} & set(t.relative_to(out).parts)]
    assert [option(c, "-e") for c in superb_runs(cmds, "train")][:1] == [f"{out}/IC/states-3.ckpt"]
    asv = [t for t in targets if t.relative_to(out).parts[0] == "ASV" and t.suffix == ".ckpt"]
    assert asv == [out / "ASV" / "states-20000.ckpt"]  # states-10000 already has its EER
    assert sorted(t.name for t in targets if t.name.startswith("ER_fold")) == [f"ER_fold{k}" for k in range(2, 6)]
    assert "scoring KS IC ER ASV SD in" in proc.stdout  # dry run: the tasks run now count as complete


@pytest.mark.slow
def test_ks_trains_tests_and_scores(tmp_path):
    """A real run of KS only: train, test, then a partial score that includes KS."""
    data = make_speech_commands(tmp_path / "data")
    ckpt = make_tiny_wavlm(tmp_path / "tiny.pt")
    wrapper = tmp_path / "pruned-upstream"
    wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                       f"exec {shlex.quote(sys.executable)} -m pruned_upstream.cli \"$@\"\n")
    wrapper.chmod(0o755)
    tiny = ("config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.batch_size=4,,"
            "config.downstream_expert.modelrc.projector_dim=8")
    env = clean_env(PRUNED_UPSTREAM=str(wrapper), PYTHON=sys.executable, STEPS_OVERRIDE="4", SUPERB_OVERRIDE_KS=tiny,
                    SPEECH_COMMANDS_ROOT=str(tmp_path / data["speech_commands_root"]),
                    SPEECH_COMMANDS_TEST_ROOT=str(tmp_path / data["speech_commands_test_root"]),
                    OMP_NUM_THREADS="1")
    out = tmp_path / "superb_tiny"
    proc = run_script([ckpt, out, "KS"], env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "states-4.ckpt" in " ".join(p.name for p in (out / "KS").iterdir())
    log = (out / "KS" / "log.log").read_text()
    assert "test at step 4: " in log and "test at step 0: " in log  # in-training test, then -m evaluate
    modes = [yaml.safe_load(p.read_text())["mode"] for p in sorted((out / "KS").glob("args_*.yaml"))]
    assert modes == ["train", "evaluate"]
    [model] = json.loads((out / "superb_score.json").read_text())
    assert model["model"] == "superb_tiny" and set(model["points"]) == {"KS"} and model["partial"]
    assert sorted(model["missing"]) == sorted(set(TASKS) - {"KS"})
    assert "partial: missing PR, IC" in proc.stdout
    # a second pass finds the result and runs nothing but the score
    again = run_script([ckpt, out, "KS"], env, timeout=120)
    assert again.returncode == 0 and "KS: result present, skipped" in again.stdout
    assert modes == [yaml.safe_load(p.read_text())["mode"] for p in sorted((out / "KS").glob("args_*.yaml"))]


def test_er_folds_can_be_reduced_and_are_checked(dry):
    ckpt, out, env = dry
    proc = run_script([ckpt, out, "ER"], {**env, "ER_FOLDS": "fold2"})
    assert proc.returncode == 0, proc.stderr
    trains = superb_runs(commands(proc.stdout), "train")
    assert [option(c, "-p") for c in trains] == [str(out / "ER_fold2")]
    bad = run_script([ckpt, out, "ER"], {**env, "ER_FOLDS": "fold6"})
    assert bad.returncode == 2 and "ER_FOLDS: 'fold6' is not fold1 .. fold5" in bad.stderr


# ------------------------------------------------- hostile OUT_DIRs (issue 18)
MARKER = "MARKER"
HOSTILE = {
    "equals": "runs/lr=1e-4",
    "dash": "-x",
    "code": ",,config.x=__import__('os').system('touch MARKER')#",
    "quote": "it's",
    "space": "my runs",
}


def s3prl_reads(override: str) -> tuple[dict, dict]:
    """What s3prl's own ``override`` (utility/helper.py) makes of an ``-o`` string: (args, config)."""
    import argparse

    from s3prl.utility.helper import override as s3prl_override

    args, config = argparse.Namespace(), {}
    s3prl_override(override, args, config)
    return vars(args), config


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_out_dirs_reach_s3prl_as_one_string(dry, name, monkeypatch):
    """ASV's -o args.expdir and ER's test_fold, read by s3prl's own parser: the path, no code run."""
    ckpt, out, env = dry
    work = out.parent / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # s3prl's eval would run `touch MARKER` here
    proc = run_script([ckpt, HOSTILE[name], "ASV", "ER"], {**env, "ER_FOLDS": "fold3"}, cwd=work)
    assert proc.returncode == 0, proc.stderr
    target = Path(os.path.abspath(work / HOSTILE[name]))
    cmds = commands(proc.stdout)
    [asv] = [c for c in superb_runs(cmds, "evaluate") if option(c, "-e") == str(target / "ASV" / "states-N.ckpt")]
    args, config = s3prl_reads(option(asv, "-o"))
    assert args == {"expdir": str(target / "ASV" / "states-N")} and config == {}
    [er] = [c for c in superb_runs(cmds, "train") if option(c, "-p") == str(target / "ER_fold3")]
    args, config = s3prl_reads(option(er, "-o"))
    assert config["downstream_expert"]["datarc"]["test_fold"] == "fold3" and config["runner"]["total_steps"] == 7
    assert not (work / MARKER).exists() and not list(work.iterdir())


def test_a_glob_in_out_dir_does_not_match_a_sibling_s_results(dry):
    """OUT_DIR exp[1] beside exp1 holding KS's result: exp[1]'s KS still runs (unquoted, it matched exp1/KS)."""
    ckpt, out, env = dry
    write_args(out / "exp1" / "KS", "speech_commands")
    (out / "exp1" / "KS" / "log.log").write_text("test at step 0: 0.9\n")
    proc = run_script([ckpt, out / "exp[1]", "KS"], env)
    assert proc.returncode == 0, proc.stderr
    assert "result present" not in proc.stdout
    trains = superb_runs(commands(proc.stdout), "train")
    assert [option(c, "-p") for c in trains] == [str(out / "exp[1]" / "KS")]


def test_an_out_dir_that_is_not_utf8_or_holds_a_newline_is_refused_in_one_line(dry):
    ckpt, out, env = dry
    proc = run_script([ckpt, str(out) + "/a\nb", "KS"], env)
    assert proc.returncode == 2 and "control character" in proc.stderr and len(proc.stderr.splitlines()) == 2
    bad = subprocess.run([b"bash", bytes(SCRIPT), bytes(ckpt), bytes(out) + b"/caf\xe9", b"KS"], env=env,
                         capture_output=True, timeout=120)
    assert bad.returncode == 2 and b"is not valid UTF-8" in bad.stderr


@pytest.mark.parametrize("value", ["runs/lr=1e-4", "exp[1]", "-x", "a,,b=c", "it's \\ \"q\"", "tab\tnew\nline",
                                   "caf\u00e9 \u65e5\u672c", ",,config.x=__import__('os').system('touch MARKER')#"])
def test_the_bash_quoting_and_the_python_quoting_agree_with_s3prl(value, tmp_path, monkeypatch):
    """run_superb.sh's s3prl_str and override_quoting.s3prl_literal: the same literal, which s3prl reads back whole."""
    from pruned_upstream.s3prl_plugin.override_quoting import s3prl_literal

    monkeypatch.chdir(tmp_path)
    proc = subprocess.run(["bash", "-c", 'source "$1"; s3prl_str "$2"', "bash", str(SCRIPT), value],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == s3prl_literal(value)
    args, _ = s3prl_reads(f"args.expdir={proc.stdout},,args.other='x'")
    assert args == {"expdir": value, "other": "x"} and not list(tmp_path.iterdir())
