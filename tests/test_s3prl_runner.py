"""s3prl's own downstream runner, in-process, through ``run_superb`` (issue 5).

One module fixture trains and tests KS and IC for a few steps on tiny
synthetic data with a tiny WavLM, then evaluates the saved checkpoints with
``-m evaluate -e``; the tests check what those runs left behind. It runs once
with s3prl's own ``wavlm_local`` (registered under a new name) and once with
our ``pruned_wavlm_local``, on the same checkpoint.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from s3prl_fixtures import (
    make_fluent_commands,
    make_speech_commands,
    make_tiny_wavlm,
    tiny_runner_config,
    write_yaml,
)

from pruned_upstream.s3prl_plugin import register, runner
from pruned_upstream.s3prl_plugin.override_quoting import s3prl_literal

STEPS = 4


@dataclass(frozen=True)
class UpstreamCase:
    """The upstream the runs use: ``-u name``, what to register, how to build ``-k``."""

    name: str
    entries: dict[str, Callable] | None  # None: our hubconf's entries
    make_ckpt: Callable[[Path], Path]


def s3prl_wavlm_case() -> UpstreamCase:
    """s3prl's own ``wavlm_local``, registered under a new name to exercise registration."""
    from s3prl.upstream.wavlm.hubconf import wavlm_local

    return UpstreamCase("tiny_wavlm_local", {"tiny_wavlm_local": wavlm_local}, make_tiny_wavlm)


def pruned_wavlm_case() -> UpstreamCase:
    """Our expert through our hubconf's entries (it reads the original WavLM .pt format too)."""
    return UpstreamCase("pruned_wavlm_local", None, make_tiny_wavlm)


UPSTREAM = s3prl_wavlm_case()  # for the tests that need one upstream only
# KS runs s3prl's own WavLM code, IC our expert: both registration routes, one run each.
TASK_UPSTREAMS = {"ks": s3prl_wavlm_case, "ic": pruned_wavlm_case}


def package_hashes(package_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of an installed package, ``__pycache__`` excluded."""
    return {
        str(p.relative_to(package_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(package_dir.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _timed(times: dict, key: str, argv: list[str], case: UpstreamCase) -> int:
    start = time.perf_counter()
    code = runner.run_superb(argv, upstreams=case.entries)
    times[key] = time.perf_counter() - start
    return code


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train+test and evaluate KS and IC from a scratch cwd with relative paths, no --device."""
    import s3prl

    cases = {task: make() for task, make in TASK_UPSTREAMS.items()}
    root = tmp_path_factory.mktemp("s3prl_runs")
    ks = tiny_runner_config(make_speech_commands(root / "data"), ("batch_size",), STEPS)
    ic = tiny_runner_config(make_fluent_commands(root / "data" / "fsc"), ("train_batch_size", "eval_batch_size"), STEPS)
    for config in (ks, ic):
        config["runner"]["eval_dataloaders"] = ["dev", "test"]
    write_yaml(root / "ks.yaml", ks)
    write_yaml(root / "ic.yaml", ic)
    make_tiny_wavlm(root / "tiny.pt")  # both upstreams read this (original WavLM) format

    package = Path(s3prl.__file__).resolve().parent
    before = package_hashes(package)
    ks_up, ic_up = (["-u", cases[task].name, "-k", "tiny.pt"] for task in ("ks", "ic"))
    times, codes = {}, {}
    previous_cwd = os.getcwd()
    os.chdir(root)
    state = (os.getcwd(), list(sys.argv), builtins.isinstance, sys.stdout, sys.stderr)
    plan = {
        "ks_train": ["-m", "train", *ks_up, "-d", "speech_commands", "-c", "ks.yaml", "-p", "exp/ks"],
        "ks_eval": ["-m", "evaluate", "-e", f"exp/ks/states-{STEPS}.ckpt"],
        "ic_train": ["-m", "train", *ic_up, "-d", "fluent_commands", "-c", "ic.yaml", "-n", "ic"],
        "ic_eval": ["-m", "evaluate", "-e", "result/downstream/ic"],  # a directory: its latest states-*.ckpt
    }
    try:
        for key, argv in plan.items():
            codes[key] = _timed(times, key, argv, cases[key[:2]])
        after_state = (os.getcwd(), list(sys.argv), builtins.isinstance, sys.stdout, sys.stderr)
    finally:
        os.chdir(previous_cwd)
    yield {
        "root": root, "upstreams": {task: case.name for task, case in cases.items()}, "codes": codes, "times": times, "before": before,
        "after": package_hashes(package), "state": state, "after_state": after_state,
    }
    import s3prl.hub

    for case in cases.values():  # leave s3prl.hub as the other test modules expect it
        for name in case.entries or ():
            delattr(s3prl.hub, name)
            runner._REGISTERED.pop(name, None)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("task, expdir", [("ks", "exp/ks"), ("ic", "result/downstream/ic")])
def test_train_test_then_evaluate_from_checkpoint(runs, task, expdir):
    assert runs["codes"][f"{task}_train"] == 0 and runs["codes"][f"{task}_eval"] == 0, runs["codes"]
    exp = runs["root"] / expdir
    assert (exp / f"states-{STEPS}.ckpt").is_file()
    log = _read(exp / "log.log")
    assert f"test at step {STEPS}: " in log  # during training (eval_dataloaders: dev, test)
    assert "test at step 0: " in log  # -m evaluate -e
    stdout = _read(exp / runner.LOG_NAME)
    assert stdout.count("### pruned-upstream superb -m train") == 1
    assert f"-u {runs['upstreams'][task]} " in stdout
    assert stdout.count("### pruned-upstream superb -m evaluate") == 1
    assert stdout.count("test acc: ") == 2
    assert f"[Runner] - Resume from {exp / f'states-{STEPS}.ckpt'}" in stdout
    assert "\r" not in stdout and "\x1b" not in stdout


@pytest.mark.slow
def test_s3prl_installed_files_unchanged(runs):
    assert runs["before"] == runs["after"]


@pytest.mark.slow
def test_process_state_restored(runs):
    import s3prl.run_downstream

    assert runs["after_state"] == runs["state"]
    assert s3prl.run_downstream.get_downstream_args.__qualname__ == "get_downstream_args"
    streams = [getattr(h, "stream", None) for h in logging.root.handlers]
    assert not any(isinstance(s, runner.TeeStream) for s in streams), streams


@pytest.mark.slow
def test_device_defaults_to_cpu_without_gpu(runs):
    args = yaml.safe_load(_read(next((runs["root"] / "exp/ks").glob("args_*.yaml"))))
    assert args["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert args["expdir"] == str(runs["root"] / "exp/ks")


def test_errors_give_exit_codes(tmp_path, capsys):
    assert runner.run_superb(["-m", "bogus"], upstreams=UPSTREAM.entries) == 2
    assert runner.run_superb(["-m", "train", "-d", "ctc"], upstreams=UPSTREAM.entries) == 2
    # the preflight names missing data before s3prl starts
    config = tiny_runner_config({"file_path": str(tmp_path / "absent")}, ("train_batch_size", "eval_batch_size"))
    write_yaml(tmp_path / "ic.yaml", config)
    argv = ["-m", "train", "-u", UPSTREAM.name, "-k", str(UPSTREAM.make_ckpt(tmp_path / "tiny.pt")),
            "-d", "fluent_commands", "-c", str(tmp_path / "ic.yaml"), "-p", str(tmp_path / "exp")]
    assert runner.run_superb(argv, upstreams=UPSTREAM.entries) == 2
    assert "absent" in capsys.readouterr().err
    # an exception inside s3prl (here: an unreadable upstream checkpoint) gives 1, its traceback in the log
    data = make_fluent_commands(tmp_path / "ic_data")
    write_yaml(tmp_path / "ic2.yaml", tiny_runner_config(data, ("train_batch_size", "eval_batch_size")))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    argv = ["-m", "train", "-u", UPSTREAM.name, "-k", str(tmp_path / "broken.pt"),
            "-d", "fluent_commands", "-c", str(tmp_path / "ic2.yaml"), "-p", str(tmp_path / "exp2")]
    assert runner.run_superb(argv, upstreams=UPSTREAM.entries) == 1
    assert "Traceback" in _read(tmp_path / "exp2" / runner.LOG_NAME)


def test_prepare_argv_makes_paths_absolute(tmp_path):
    (tmp_path / "tiny.pt").write_bytes(b"")
    argv = ["-m", "train", "-u", "x", "-k", "tiny.pt", "-d", "speech_commands", "--config=ks.yaml", "-pexp",
            "-o", "args.expdir='out',,config.a.b=tiny.pt,,config.runner.total_steps=3", "--device", "cuda:1"]
    out = runner.prepare_argv(argv, tmp_path, cuda_available=False)
    assert out == ["-m", "train", "-u", "x", "-k", str(tmp_path / "tiny.pt"), "-d", "speech_commands",
                   f"--config={tmp_path / 'ks.yaml'}", f"-p{tmp_path / 'exp'}",
                   "-o", f"args.expdir={s3prl_literal(str(tmp_path / 'out'))},,config.a.b={s3prl_literal(str(tmp_path / 'tiny.pt'))}"
                   ",,config.runner.total_steps=3",
                   "--device", "cuda:1"]


def test_prepare_argv_leaves_urls_and_split_names(tmp_path):
    argv = ["-m", "evaluate", "-e", "exp/ks", "-t", "test", "-k", "https://example.org/m.pt"]
    out = runner.prepare_argv(argv, tmp_path, cuda_available=True)
    assert out == ["-m", "evaluate", "-e", str(tmp_path / "exp/ks"), "-t", "test", "-k", "https://example.org/m.pt"]


def test_prepare_argv_defaults(tmp_path):
    out = runner.prepare_argv(["-m", "train", "-d", "speech_commands", "-n", "run1"], tmp_path, cuda_available=False)
    assert out[6:] == ["-c", str(runner.config_for_downstream("speech_commands")),
                       "-p", str(tmp_path / "result/downstream/run1"), "--device", "cpu"]
    assert Path(out[7]).name == "ks.yaml" and Path(out[7]).is_file()
    gpu = runner.prepare_argv(["-m", "train", "-d", "fluent_commands", "-c", "/c.yaml", "-p", "/e"], tmp_path, True)
    assert gpu == ["-m", "train", "-d", "fluent_commands", "-c", "/c.yaml", "-p", "/e"]


def test_config_for_shared_downstream_is_an_error():
    with pytest.raises(ValueError, match="'ctc'"):
        runner.config_for_downstream("ctc")


def test_log_sink_collapses_progress_bars(tmp_path):
    sink = runner.LogSink("head\n")
    sink.write("stderr", "early\n\rbar 1/3")
    sink.open(tmp_path / "log")
    sink.write("stderr", "\rbar 2/3\r       \r")
    sink.write("stdout", "print\x1b[A line\n")
    sink.write("stderr", "\rbar 3/3\n")
    sink.write("stdout", "unterminated\x1b[A")
    sink.close()
    sink.write("stdout", "after close\n")
    assert _read(tmp_path / "log") == "head\nearly\nprint line\nbar 3/3\nunterminated\n"


def test_hub_entries_come_from_our_hubconf():
    from pruned_upstream.s3prl_plugin import hubconf

    assert runner.hub_entries()["pruned_wavlm_local"] is hubconf.pruned_wavlm_local


def test_register_upstreams_refuses_to_replace_s3prl_entries():
    import s3prl.hub

    with pytest.raises(ValueError, match="wavlm_local"):
        runner.register_upstreams({"wavlm_local": print})
    try:
        runner.register_upstreams({"tiny_test_entry": print})
        runner.register_upstreams({"tiny_test_entry": len})  # ours: may be replaced
        assert s3prl.hub.tiny_test_entry is len
    finally:  # leave s3prl.hub as it was for the other tests
        delattr(s3prl.hub, "tiny_test_entry")
        runner._REGISTERED.pop("tiny_test_entry", None)
    assert not hasattr(s3prl.hub, "tiny_test_entry")


def _fake_checkout(root: Path) -> Path:
    pkg = root / "s3prl"
    (pkg / "upstream" / "wavlm").mkdir(parents=True)
    (pkg / "hub.py").write_text(
        "from s3prl.upstream.apc.hubconf import *\n"
        "from s3prl.upstream.wavlm.hubconf import *\n\n\n"
        "def options():\n    pass\n"
    )
    (pkg / "upstream" / "wavlm" / "hubconf.py").write_text("def wavlm_local(ckpt):\n    pass\n")
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_register_s3prl_is_idempotent_and_reversible(tmp_path):
    checkout = _fake_checkout(tmp_path / "s3prl_checkout")
    original = _snapshot(checkout)
    assert len(register.register_s3prl(checkout)) == 4  # three files and hub.py
    registered = _snapshot(checkout)
    assert register.register_s3prl(checkout) == []
    assert _snapshot(checkout) == registered
    hub_lines = (checkout / "s3prl" / "hub.py").read_text().splitlines()
    assert hub_lines[2] == register.HUB_LINE  # after the last upstream import
    for name, text in register.upstream_files().items():
        compile(text, name, "exec")
        assert registered[f"s3prl/upstream/{register.UPSTREAM_NAME}/{name}"] == text.encode()
    assert len(register.unregister_s3prl(checkout)) == 5  # three files, the folder, hub.py
    assert _snapshot(checkout) == original
    assert not (checkout / "s3prl" / "upstream" / register.UPSTREAM_NAME).exists()
    assert register.unregister_s3prl(checkout) == []


def test_register_s3prl_refuses_foreign_files(tmp_path):
    checkout = _fake_checkout(tmp_path)
    folder = checkout / "s3prl" / "upstream" / register.UPSTREAM_NAME
    folder.mkdir()
    (folder / "expert.py").write_text("# someone else's\n")
    with pytest.raises(FileExistsError, match="expert.py"):
        register.register_s3prl(checkout)
    assert (folder / "expert.py").read_text() == "# someone else's\n"
    with pytest.raises(FileNotFoundError, match="not an s3prl checkout"):
        register.register_s3prl(tmp_path / "nowhere")


def test_the_marker_names_an_undo_command_that_works(tmp_path, capsys):
    from pruned_upstream.cli import main

    checkout = _fake_checkout(tmp_path / "s3prl_checkout")
    original = _snapshot(checkout)
    register.register_s3prl(checkout)
    undo = register.MARKER.rsplit("undo with `", 1)[1].split("`")[0]  # "pruned-upstream register-s3prl ..."
    argv = undo.split()[1:]
    assert main([str(checkout) if a == "CHECKOUT" else a for a in argv]) == 0
    assert _snapshot(checkout) == original and "removed" in capsys.readouterr().out


def test_paths_made_absolute_inside_o_stay_one_string_for_s3prl(tmp_path):
    """`-o args.expdir=runs/lr=1e-4` (two '=': s3prl alone fails to unpack) and a path holding code: made
    absolute and quoted, s3prl's own parser reads back exactly the path and runs nothing."""
    import argparse

    from s3prl.utility.helper import override as s3prl_override

    hostile = ",config.x=__import__('os').system('touch MARKER')#"
    (tmp_path / hostile).mkdir()
    cases = (("args.expdir=runs/lr=1e-4", tmp_path / "runs/lr=1e-4"),  # args.<path>: always made absolute
             (f"config.downstream_expert.datarc.root='{hostile}'", tmp_path / hostile))  # config.*: when it exists
    for given, expected in cases:
        argv = runner.prepare_argv(["-m", "train", "-d", "speech_commands", "-p", "exp", "-o", given],
                                   tmp_path, cuda_available=True)
        args, config = argparse.Namespace(), {}
        s3prl_override(argv[argv.index("-o") + 1], args, config)
        assert [vars(args).get("expdir"), config.get("downstream_expert", {}).get("datarc", {}).get("root")].count(
            str(expected)) == 1
    assert not (tmp_path / "MARKER").exists() and not Path("MARKER").exists()
