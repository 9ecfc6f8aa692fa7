"""A run directory from elsewhere holding symbolic links: `prune --out RUN --resume` and `plot RUN`
never follow one (issue 18). Each planted link points at a file outside RUN (or at nothing): the
file must keep its content, mode and mtime (or stay absent), and the refusal is one line naming
the link. Tiny teacher, synthetic audio, CPU (seconds each)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from training_fixtures import tiny, write_manifest

from pruned_upstream import cli
from pruned_upstream import run_dir as run_io
from pruned_upstream.run_files import RunLinkError, refuse_links, remove_tree, staged, write_replacing

OLD = 1_000_000_000  # a fixed mtime (2001) for the victim files, in seconds


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest(tmp_path_factory.mktemp("audio"), 6, seed=2)


@pytest.fixture(scope="module")
def halfway(manifest, tmp_path_factory) -> Path:
    """A run of 4 steps killed after its checkpoint at step 2 (summary and step-4 gone)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    args = tiny(manifest, "train.steps=4", "train.save_every=2", "train.warmup=0", "train.sparsity_warmup=0",
                "run.keep_checkpoints=0")
    assert cli.main(["prune", "--config", "demo", *args, "--out", str(out)]) == 0
    (out / "summary.json").unlink()
    shutil.rmtree(out / "checkpoints" / "step-4")
    return out


@pytest.fixture()
def run(halfway, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(halfway, out, symlinks=True)
    return out


def victim(tmp_path: Path, name: str = "victim.txt") -> Path:
    path = tmp_path / name
    path.write_text("precious: must not change\n")
    os.chmod(path, 0o640)
    os.utime(path, (OLD, OLD))
    return path


def untouched(path: Path) -> bool:
    st = path.stat()
    return (path.read_text() == "precious: must not change\n" and st.st_mode & 0o777 == 0o640
            and st.st_mtime_ns == OLD * 10**9)


def prune_resume(run: Path, capsys) -> tuple[int, str]:
    code = cli.main(["prune", "--out", str(run), "--resume"])
    return code, capsys.readouterr().err.strip()


def refused(err: str, link: Path) -> bool:
    return len(err.splitlines()) == 1 and f"{link} is a symbolic link; refused" in err


# ---------------------------------------------------------------------------- prune --resume
@pytest.mark.parametrize("entry", [".lock", "log.jsonl", "summary.json", "config.yaml", "skipped_audio.tsv",
                                   "checkpoints/step-2/state.pt"])
def test_resume_refuses_a_link_to_a_file_and_leaves_the_file(run, tmp_path, capsys, entry):
    target = victim(tmp_path)
    link = run / entry
    if link.exists():
        link.unlink()
    link.symlink_to(target)
    code, err = prune_resume(run, capsys)
    assert code == 1 and refused(err, link), err
    assert untouched(target) and link.is_symlink()
    assert not (run / "summary.json").exists() or (run / "summary.json").is_symlink()


@pytest.mark.parametrize("entry", ["log.jsonl", ".lock", "summary.json"])
def test_resume_refuses_a_dangling_link_and_creates_nothing(run, tmp_path, capsys, entry):
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    (run / entry).unlink(missing_ok=True)
    (run / entry).symlink_to(target)
    code, err = prune_resume(run, capsys)
    assert code == 1 and refused(err, run / entry), err
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_planted_summary_temp_name_is_never_written_through(run, tmp_path, capsys):
    """summary.json.tmp was the temp name once; temp files now have fresh names, created with O_EXCL."""
    target = victim(tmp_path)
    (run / "summary.json.tmp").symlink_to(target)
    code, err = prune_resume(run, capsys)
    assert code == 0, err
    assert untouched(target)
    assert json.loads((run / "summary.json").read_text())["steps"] == 4 and not (run / "summary.json").is_symlink()
    assert not list(run.glob(".summary.json.tmp-*")) and not list(run.glob(".log.jsonl.tmp-*"))


@pytest.mark.parametrize("entry", ["checkpoints/step-2", "checkpoints/step-6", "checkpoints", "plots", "tb"])
def test_resume_refuses_a_linked_directory_and_leaves_it(run, tmp_path, capsys, entry):
    """A step-N that is a link (to a real checkpoint: resuming from it would follow the link), or a
    directory the run writes into."""
    outside = tmp_path / "outside"
    shutil.copytree(run / "checkpoints" / "step-2", outside)
    for item in outside.iterdir():
        os.utime(item, (OLD, OLD))
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    link = run / entry
    if link.exists():
        shutil.rmtree(link)
    link.symlink_to(outside, target_is_directory=True)
    code, err = prune_resume(run, capsys)
    assert code == 1 and refused(err, link), err
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    assert all(p.stat().st_mtime_ns == OLD * 10**9 for p in outside.iterdir())


@pytest.mark.parametrize("entry", [".lock", "log.jsonl"])
def test_a_file_written_in_place_is_refused_when_hard_linked(run, tmp_path, capsys, entry):
    """The lock is rewritten and log.jsonl appended in place: a hard link to a file elsewhere (same file
    system; an archive may hold one) would change that file. (log.jsonl: a resume without a checkpoint
    appends to it as it is.)"""
    target = victim(tmp_path)
    if entry == "log.jsonl":
        shutil.rmtree(run / "checkpoints")
    (run / entry).unlink(missing_ok=True)
    os.link(target, run / entry)
    code, err = prune_resume(run, capsys)
    assert code == 1 and len(err.splitlines()) == 1 and f"{run / entry}: has 2 hard links; refused" in err, err
    assert untouched(target)


def test_a_new_run_refuses_a_planted_lock_link(manifest, tmp_path, capsys):
    target = victim(tmp_path)
    out = tmp_path / "new"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    code = cli.main(["prune", "--config", "demo", *tiny(manifest, "train.steps=1"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and refused(err, out / ".lock"), err
    assert untouched(target) and not (out / "config.yaml").exists()


def test_the_run_directory_itself_may_be_a_link(run, tmp_path, capsys):
    """RUN is named by the user: a link to it is their choice and is followed (docs/reliability.md)."""
    alias = tmp_path / "alias"
    alias.symlink_to(run, target_is_directory=True)
    code, err = prune_resume(alias, capsys)
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


def test_export_of_a_run_refuses_a_linked_newest_checkpoint(run, tmp_path, capsys):
    """`export RUN` takes RUN's newest checkpoint: a step-N link there is refused, not exported."""
    outside = tmp_path / "outside"
    shutil.copytree(run / "checkpoints" / "step-2", outside)
    (run / "checkpoints" / "step-6").symlink_to(outside, target_is_directory=True)
    code = cli.main(["export", str(run), "--out", str(tmp_path / "model.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and refused(err, run / "checkpoints" / "step-6"), err
    assert not (tmp_path / "model.safetensors").exists()


# ---------------------------------------------------------------------------- plot
@pytest.mark.parametrize("name", ["loss.png", "kept_params_per_layer.png"])
def test_plot_refuses_a_linked_png_and_leaves_its_target(run, tmp_path, capsys, name):
    target = victim(tmp_path)
    (run / "plots").mkdir()
    (run / "plots" / name).symlink_to(target)
    code = cli.main(["plot", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and refused(err, run / "plots" / name), err
    assert untouched(target)


def test_plot_writes_its_pngs_as_regular_files(run, capsys):
    assert cli.main(["plot", str(run)]) == 0
    pngs = sorted(p.name for p in (run / "plots").iterdir())
    assert "loss.png" in pngs and "kept_params_per_layer.png" in pngs
    assert all(not p.is_symlink() and p.read_bytes()[:4] == b"\x89PNG" for p in (run / "plots").iterdir())


def test_plot_refuses_a_linked_log(run, tmp_path, capsys):
    target = tmp_path / "log.jsonl"
    shutil.copy(run / "log.jsonl", target)
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").symlink_to(target)
    code = cli.main(["plot", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and refused(err, run / "log.jsonl"), err


# ---------------------------------------------------------------------------- the pieces
def test_removing_a_checkpoint_never_follows_a_link(tmp_path):
    """remove_tree refuses a link (shutil.rmtree(link, ignore_errors=True) silently does nothing);
    a real directory holding links loses the links, never their targets."""
    target, folder = victim(tmp_path), tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.bin").write_bytes(b"x" * 10)
    link = tmp_path / "step-1"
    link.symlink_to(folder, target_is_directory=True)
    with pytest.raises(RunLinkError, match="step-1 is a symbolic link; refused"):
        remove_tree(link)
    real = tmp_path / "step-2"
    real.mkdir()
    (real / "to_file").symlink_to(target)
    (real / "to_dir").symlink_to(folder, target_is_directory=True)
    remove_tree(real)
    assert not real.exists() and untouched(target) and (folder / "keep.bin").read_bytes() == b"x" * 10


def test_keeping_the_newest_checkpoints_refuses_a_linked_old_one(tmp_path):
    run = tmp_path / "run"
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in (run_io.STUDENT_FILE, run_io.STATE_FILE):
        (outside / name).write_bytes(b"not ours")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunLinkError):
        run_io.list_checkpoints(run)
    with pytest.raises(RunLinkError):
        refuse_links(run)
    assert sorted(p.name for p in outside.iterdir()) == sorted([run_io.STUDENT_FILE, run_io.STATE_FILE])


def test_writers_refuse_a_linked_destination_and_leave_no_temp_file(tmp_path):
    target = victim(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").symlink_to(target)
    (folder / "log.jsonl").symlink_to(target)
    with pytest.raises(RunLinkError):
        write_replacing(folder / "summary.json", "{}")
    with pytest.raises(RunLinkError):
        with staged(folder / "summary.json"):
            pass
    with pytest.raises(RunLinkError):
        run_io.ScalarLog(folder, tensorboard=False).write(1, {"x": 1.0})
    assert untouched(target) and sorted(p.name for p in folder.iterdir()) == ["log.jsonl", "summary.json"]
