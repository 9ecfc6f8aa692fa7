"""A SUPERB task killed mid-training resumes: through `pruned-upstream superb -e` (s3prl's own
resume from the last complete states-N.ckpt) and through scripts/run_superb.sh, which continues
where it stopped. KS on the tiny Speech Commands layout of s3prl_fixtures, on CPU."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from s3prl_fixtures import make_speech_commands, make_tiny_wavlm, tiny_runner_config, write_yaml

from pruned_upstream.s3prl_plugin.runner_args import PreflightError, resolve_and_check, resolve_past_exp

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_superb.sh"
LONG = 5000  # steps the first run is set to: it is killed long before (about 40 steps/s here)


def env(**extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERB_OVERRIDE", "STEPS_OVERRIDE", "DRY_RUN"))}
    return {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def kill_after(cmd: list[str], expdir: Path, cwd: Path, run_env: dict, step: int = 6) -> None:
    """Start `cmd` in its own process group; SIGKILL the group once states-<step>.ckpt exists."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 180
    while not (expdir / f"states-{step}.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, f"ended before it could be killed: {proc.stderr.read()[-3000:]!r}"


def steps(expdir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in expdir.glob("states-*.ckpt"))


def cut_short(expdir: Path) -> tuple[int, Path]:
    """The newest checkpoint as a save cut short by the kill would leave it: half its bytes.

    `last` is the newest COMPLETE checkpoint: the kill itself may have cut the newest real one."""
    last = max(n for n in steps(expdir) if zipfile.is_zipfile(expdir / f"states-{n}.ckpt"))
    path = expdir / f"states-{last + 2}.ckpt"
    data = (expdir / f"states-{last}.ckpt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return last, path


@pytest.fixture(scope="module")
def ks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ks_resume")
    data = make_speech_commands(root / "data")
    config = tiny_runner_config(data, ("batch_size",), LONG)
    config["runner"].update(save_step=2, max_keep=10_000)
    write_yaml(root / "ks.yaml", config)
    make_tiny_wavlm(root / "tiny.pt")
    (root / "data_roots.yaml").write_text(yaml.safe_dump(data))
    return root


@pytest.mark.slow
def test_superb_resumes_a_killed_training_from_its_last_complete_checkpoint(ks):
    cli = [sys.executable, "-m", "pruned_upstream.cli", "superb"]
    expdir = ks / "exp" / "ks"
    kill_after([*cli, "-m", "train", "-u", "pruned_wavlm_local", "-k", "tiny.pt", "-d", "speech_commands",
                "-c", "ks.yaml", "-p", "exp/ks"], expdir, ks, env())
    last, short = cut_short(expdir)
    before = {s: (expdir / f"states-{s}.ckpt").stat().st_mtime_ns for s in steps(expdir) if s <= last}

    with pytest.raises(PreflightError, match=re.escape(
            f"-e {short}: an incomplete checkpoint (the run was stopped while saving it?); resume from "
            f"{expdir / f'states-{last}.ckpt'}")):
        resolve_and_check(["-m", "train", "-e", str(short)])

    end = last + 6  # s3prl's own -o on top of the checkpoint's config: a short remainder
    resumed = subprocess.run([*cli, "-m", "train", "-e", "exp/ks", "-o", f"config.runner.total_steps={end}"],
                             cwd=ks, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"skipping {short}: incomplete" in resumed.stdout
    assert f"Resume from {expdir / f'states-{last}.ckpt'}" in resumed.stdout
    assert steps(expdir)[-1] == end
    assert torch.load(expdir / f"states-{end}.ckpt", map_location="cpu", weights_only=False)["Step"] == end
    # the steps before the kill were not trained again
    assert {s: (expdir / f"states-{s}.ckpt").stat().st_mtime_ns for s in before} == before
    assert torch.load(short, map_location="cpu", weights_only=False)["Step"] == last + 2  # saved again, whole


@pytest.mark.slow
def test_run_superb_script_continues_a_killed_task(ks, tmp_path):
    data = yaml.safe_load((ks / "data_roots.yaml").read_text())
    wrapper = tmp_path / "pruned-upstream"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pruned_upstream.cli \"$@\"\n")
    wrapper.chmod(0o755)
    tiny = ("config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.batch_size=4,,"
            "config.downstream_expert.modelrc.projector_dim=8,,config.runner.save_step=2,,config.runner.max_keep=10000")
    run_env = env(PRUNED_UPSTREAM=str(wrapper), PYTHON=sys.executable, SUPERB_OVERRIDE_KS=tiny,
                  SPEECH_COMMANDS_ROOT=data["speech_commands_root"],
                  SPEECH_COMMANDS_TEST_ROOT=data["speech_commands_test_root"])
    out = tmp_path / "superb"
    cmd = ["bash", str(SCRIPT), str(ks / "tiny.pt"), str(out), "KS"]
    kill_after(cmd, out / "KS", tmp_path, {**run_env, "STEPS_OVERRIDE": str(LONG)})
    assert not (out / "KS" / "train.done").exists()
    last, short = cut_short(out / "KS")
    end = last + 6
    again = subprocess.run(cmd, cwd=tmp_path, env={**run_env, "STEPS_OVERRIDE": str(end)}, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"skipping {short}: incomplete" in again.stdout + again.stderr
    assert f"KS: resuming {out / 'KS'} from {out / 'KS' / f'states-{last}.ckpt'}" in again.stdout
    assert (out / "KS" / "train.done").exists() and steps(out / "KS")[-1] == end
    log = (out / "KS" / "log.log").read_text()
    assert "test at step 0: " in log  # then -m evaluate of the best checkpoint
    assert "complete: KS;" in again.stdout


def fake_states(expdir: Path, complete: list[int], short: list[int]) -> None:
    """states-N.ckpt files: complete ones are real torch files, the others half of one."""
    expdir.mkdir(parents=True, exist_ok=True)
    for step in complete + short:
        torch.save({"Step": step}, expdir / f"states-{step}.ckpt")
    for step in short:
        data = (expdir / f"states-{step}.ckpt").read_bytes()
        (expdir / f"states-{step}.ckpt").write_bytes(data[: len(data) // 2])


def test_e_of_a_directory_takes_its_newest_complete_checkpoint(tmp_path, capsys):
    fake_states(tmp_path / "exp", [2, 10], [12])  # 10 < 12 numerically, not as text
    argv = resolve_past_exp(["-m", "train", f"--past_exp={tmp_path / 'exp'}", "-o", "x=1"])
    assert argv == ["-m", "train", f"--past_exp={tmp_path / 'exp' / 'states-10.ckpt'}", "-o", "x=1"]
    assert f"skipping {tmp_path / 'exp' / 'states-12.ckpt'}: incomplete" in capsys.readouterr().out
    assert resolve_past_exp(["-e", str(tmp_path / "exp" / "states-2.ckpt")]) == [
        "-e", str(tmp_path / "exp" / "states-2.ckpt")]  # a complete file: as given


def test_e_of_a_checkpoint_cut_short_is_refused_in_one_line(tmp_path):
    fake_states(tmp_path / "only", [], [4])
    with pytest.raises(PreflightError, match=re.escape(f"-e {tmp_path / 'only'}: no complete states-*.ckpt in the "
                                                       f"directory (1 incomplete); train it again with -p")):
        resolve_past_exp(["-e", str(tmp_path / "only")])
    with pytest.raises(PreflightError, match=r"an incomplete checkpoint \(the run was stopped while saving it\?\)$"):
        resolve_past_exp(["-e", str(tmp_path / "only" / "states-4.ckpt")])
