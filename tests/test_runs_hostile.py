"""Runs under hostile conditions: resume as the README writes it, two processes on one run
directory, a full disk while saving. Tiny teacher, synthetic audio, CPU (seconds each)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from training_fixtures import tiny, write_manifest

from pruned_upstream import cli
from pruned_upstream import run_dir as run_io
from pruned_upstream.training.lock import LOCK_NAME, RunLock, RunLocked
from pruned_upstream.training.run import run_prune

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest(tmp_path_factory.mktemp("audio"), 8, seed=1)


def first_start(manifest: str, *extra: str) -> list[str]:
    """The first start's overrides of the demo config (warm-ups of 10 % and 20 % of the steps)."""
    return tiny(manifest, "train.warmup=0.1", "train.sparsity_warmup=0.2", "train.steps=10", "train.save_every=4",
                "run.keep_checkpoints=0", *extra)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return run_io.read_student_file(ckpt / run_io.STUDENT_FILE)[2]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def crash_after(out: Path, step: int) -> None:
    """What a run killed just after saving step-<step> leaves: later checkpoints and the summary gone."""
    (out / "summary.json").unlink()
    for s, path in run_io.list_checkpoints(out):
        if s > step:
            import shutil
            shutil.rmtree(path)


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory) -> Path:
    """The uninterrupted run of 10 steps."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert run_prune("demo", first_start(manifest), out) == 0
    return out


# ---------------------------------------------------------------------------- resume semantics
@pytest.mark.parametrize("how", ["readme", "no_config", "first_command_again"])
def test_resume_as_the_readme_writes_it(manifest, reference, tmp_path, how, capsys):
    out = tmp_path / "run"
    assert cli.main(["prune", "--config", "demo", *first_start(manifest), "--out", str(out)]) == 0
    crash_after(out, 4)
    argv = {"readme": ["prune", "--config", "demo", "--out", str(out), "--resume"],  # README: no overrides
            "no_config": ["prune", "--out", str(out), "--resume"],
            "first_command_again": ["prune", "--config", "demo", *first_start(manifest), "--out", str(out),
                                    "--resume"]}[how]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["steps"] == 10
    assert same_weights(run_io.latest_checkpoint(out), run_io.latest_checkpoint(reference))
    assert run_io.read_log(out) == run_io.read_log(reference)


def test_a_start_needs_a_config(tmp_path, capsys):
    assert cli.main(["prune", "--out", str(tmp_path / "new")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--config NAME|FILE is needed to start a run" in err and len(err.splitlines()) == 1


def test_resume_refuses_a_change_of_the_computation_in_one_line(reference, manifest, capsys):
    before = (reference / "config.yaml").read_text()
    assert cli.main(["prune", "--out", str(reference), "--resume", "train.lr=1e-3", "train.save_every=2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.lr differs: 0.001 given, 0.0002 saved" in err and "train.save_every" not in err.split(";")[0]
    assert "keys that may change: train.steps" in err
    assert (reference / "config.yaml").read_text() == before


def test_more_steps_after_the_warmups_continue_the_run(manifest, tmp_path):
    out = tmp_path / "run"
    assert run_prune("demo", first_start(manifest), out) == 0  # finished at 10
    assert run_prune(None, ["train.steps=14", "train.log_every=2"], out, resume=True) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 14
    assert [s for s, _ in run_io.list_checkpoints(out)] == [4, 8, 10, 12, 14]
    saved = (out / "config.yaml").read_text()
    assert "steps: 14" in saved and "log_every: 2" in saved
    log = run_io.read_log(out)
    assert [r["step"] for r in log if r["step"] > 10] == [12, 14]
    assert log[-1]["lr/weights"] == 0.0  # the linear decay now ends at step 14


def test_steps_may_not_change_during_a_warmup_nor_below_the_checkpoint(manifest, reference, tmp_path):
    out = tmp_path / "run"
    assert run_prune("demo", first_start(manifest), out) == 0
    crash_after(out, 4)
    # at 40 steps the sparsity warm-up runs to step 8: the checkpoint (4) is inside it
    with pytest.raises(ValueError, match=r"train.steps may change only after both warm-ups .* from step 8; "
                                         r"the checkpoint is at step 4"):
        run_prune(None, ["train.steps=40"], out, resume=True)
    with pytest.raises(ValueError, match=r"train.steps=3 is below the checkpoint's step 4; allowed: >= 4"):
        run_prune(None, ["train.steps=3"], out, resume=True)
    assert run_prune(None, [], out, resume=True) == 0
    assert same_weights(run_io.latest_checkpoint(out), run_io.latest_checkpoint(reference))


# ---------------------------------------------------------------------------- one process per run
HOLDER = textwrap.dedent("""
    import sys, time
    from pruned_upstream.training.lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def test_a_second_prune_is_refused_and_a_killed_holders_lock_is_stale(manifest, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = cli.main(["prune", "--config", "demo", *first_start(manifest), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1
        assert f"is in use by another prune (pid {holder.pid} on " in err
        assert not (out / "config.yaml").exists()  # nothing was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).read_text().startswith(f"pid {holder.pid} ")  # the dead holder's file remains
    assert run_prune("demo", first_start(manifest, "train.steps=2"), out) == 0  # ... and is taken over
    with RunLock(out):  # released at the end of the run
        pass


def test_two_prune_processes_into_one_directory(manifest, tmp_path):
    """A real `prune` holds the directory while it trains; a second is refused; after SIGKILL, --resume works."""
    out = tmp_path / "run"
    args = first_start(manifest, "train.steps=400", "train.save_every=2", "train.warmup=0",
                       "train.sparsity_warmup=0")
    proc = subprocess.Popen([sys.executable, "-m", "pruned_upstream.cli", "prune", "--config", "demo", *args,
                             "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not run_io.list_checkpoints(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        with pytest.raises(RunLocked, match=f"pid {proc.pid} "):
            run_prune(None, [], out, resume=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    at = run_io.list_checkpoints(out)[-1][0]
    assert at < 400
    assert run_prune(None, [f"train.steps={at + 2}"], out, resume=True) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == at + 2


# ---------------------------------------------------------------------------- full disk
def test_full_disk_stops_the_run_keeps_the_last_checkpoint_and_resume_continues(
        manifest, reference, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = {"n": 0}

    def disk_full_on_second(obj, f, *args, **kwargs):  # the second checkpoint (step 8) hits a full disk
        calls["n"] += 1
        if calls["n"] == 2:
            Path(f).write_bytes(b"PK\x03\x04 half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_second)
    out = tmp_path / "run"
    assert cli.main(["prune", "--config", "demo", *first_start(manifest), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert f"the previous checkpoint {out / 'checkpoints' / 'step-4'} is complete" in err
    assert f"pruned-upstream prune --out {out} --resume" in err
    assert [s for s, _ in run_io.list_checkpoints(out)] == [4]
    assert not list((out / "checkpoints").glob(".tmp-*")) and not (out / "summary.json").exists()
    run_io.load_student(out)  # loadable
    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert cli.main(["prune", "--out", str(out), "--resume"]) == 0
    assert same_weights(run_io.latest_checkpoint(out), run_io.latest_checkpoint(reference))


def fill_disk(monkeypatch, full) -> object:
    """os.open raises ENOSPC where `full(file name, flags)` says so; returns the real os.open."""
    real_open = os.open

    def disk_full(file, flags, *args, **kwargs):
        if full(Path(file).name, flags):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", disk_full)
    return real_open


def prune_fails_in_one_line(manifest, out, capsys) -> str:
    """A first start of the demo config into `out` fails (exit 1) with one line on stderr: that line."""
    assert cli.main(["prune", "--config", "demo", *first_start(manifest), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("victim", ["log.jsonl", "summary.json"])
def test_full_disk_on_the_log_or_the_summary_stops_in_one_line_and_resume_finishes(
        manifest, reference, tmp_path, monkeypatch, capsys, victim):
    """ENOSPC while appending log.jsonl (at step 6) or writing summary.json's temp file: one line naming the file."""
    calls = {"n": 0}

    def full(name: str, flags: int) -> bool:
        if flags & (os.O_WRONLY | os.O_RDWR) and (
                (victim == "log.jsonl" and name == victim) or name.startswith(f".{victim}.tmp-")):
            calls["n"] += 1
            return victim == "summary.json" or calls["n"] == 6
        return False

    real_open = fill_disk(monkeypatch, full)
    out = tmp_path / "run"
    err = prune_fails_in_one_line(manifest, out, capsys)
    assert f"cannot write {out / victim} (No space left on device)" in err
    assert f"pruned-upstream prune --out {out} --resume" in err
    assert not (out / "summary.json").exists() and not list(out.glob(".summary.json.tmp*"))
    monkeypatch.setattr(os, "open", real_open)  # space freed
    assert cli.main(["prune", "--out", str(out), "--resume"]) == 0
    assert same_weights(run_io.latest_checkpoint(out), run_io.latest_checkpoint(reference))
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 10


FSIZE_SAVE = textwrap.dedent("""
    import dataclasses, resource, signal, sys
    import torch
    from pruned_upstream.gating import PruneConfig
    from pruned_upstream import run_dir as run_io
    from pruned_upstream.model.prunable import make_prunable
    from pruned_upstream.model.wavlm import WavLM, tiny_arch
    torch.manual_seed(0)
    student = make_prunable(WavLM(tiny_arch()))
    state = {"step": 1, "blob": torch.zeros(50_000)}
    prune = dataclasses.asdict(PruneConfig())
    run_io.save_checkpoint(sys.argv[1], 1, student, prune, state)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    try:
        run_io.save_checkpoint(sys.argv[1], 2, student, prune, {**state, "step": 2, "blob": torch.zeros(100_000)})
    except run_io.CheckpointWriteError as err:
        print(err)
""")


def test_a_write_past_the_file_size_limit_leaves_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", FSIZE_SAVE, str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    message = result.stdout.strip()
    assert message.startswith(f"cannot write checkpoint {out / 'checkpoints' / 'step-2'} (")
    assert f"the previous checkpoint {out / 'checkpoints' / 'step-1'} is complete" in message
    assert [s for s, _ in run_io.list_checkpoints(out)] == [1]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    state = torch.load(run_io.latest_checkpoint(out) / run_io.STATE_FILE, map_location="cpu", weights_only=True)
    assert state["step"] == 1 and state["blob"].numel() == 50_000
    assert run_io.load_student(out).arch.num_layers == 2


@pytest.mark.slow
def test_a_failed_checkpoint_write_stops_both_ddp_processes(manifest, tmp_path):
    """2 gloo processes, files limited to 48 KB (the first checkpoint is larger): both stop, none hangs."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, 48 << 10))

    out = tmp_path / "ddp"
    args = first_start(manifest, "train.save_every=3", "data.length_jitter=0")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "pruned_upstream.cli", "prune", "--config", "demo", *args, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240, preexec_fn=limit,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    # each process says why it stopped (their lines may interleave on the shared stderr)
    stopped = re.findall(r"pruned-upstream prune: error: cannot write checkpoint \S*step-3 \([^)]*File too large",
                         proc.stderr)
    assert len(stopped) == 2, proc.stderr[-3000:]
    assert run_io.list_checkpoints(out) == [] and not list((out / "checkpoints").glob(".tmp-*"))


def test_a_full_disk_when_taking_the_lock_says_so_in_one_line(tmp_path, monkeypatch):
    import pruned_upstream.training.lock as lock_module

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock_module.os, "write", no_space)
    with pytest.raises(OSError, match=r"cannot write .*\.lock \(No space left on device\): free space"):
        RunLock(tmp_path).acquire()
    monkeypatch.undo()
    with RunLock(tmp_path):  # the failed attempt left no lock behind
        pass


def test_a_full_disk_when_saving_the_config_says_so_in_one_line(manifest, tmp_path, monkeypatch, capsys):
    fill_disk(monkeypatch, lambda name, flags: name.startswith(".config.yaml.tmp-"))
    out = tmp_path / "run"
    err = prune_fails_in_one_line(manifest, out, capsys)
    assert f"cannot write {out / 'config.yaml'} (No space left on device): free space" in err
    assert not (out / "config.yaml").exists() and not list(out.glob(".config.yaml.tmp-*"))


def test_out_of_memory_during_the_run_stops_in_one_line_and_resume_finishes(
        manifest, reference, tmp_path, monkeypatch, capsys):
    """A MemoryError (numpy, Python) at step 6: one line naming the run and --resume; the checkpoint at 4 stays."""
    from pruned_upstream.training.trainer import Trainer

    real_step = Trainer.train_step

    def out_of_memory(self, micro_batches):
        if self.step == 5:
            raise MemoryError()
        return real_step(self, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    out = tmp_path / "run"
    assert cli.main(["prune", "--config", "demo", *first_start(manifest), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "out of memory (MemoryError)" in err and f"pruned-upstream prune --out {out} --resume" in err
    assert [s for s, _ in run_io.list_checkpoints(out)] == [4]
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert cli.main(["prune", "--out", str(out), "--resume"]) == 0
    assert same_weights(run_io.latest_checkpoint(out), run_io.latest_checkpoint(reference))
