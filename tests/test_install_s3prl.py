"""scripts/install_s3prl.py: a source tree is recognised by its files; without one, `--require` fails in one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install_s3prl.py"


def load_script():
    spec = importlib.util.spec_from_file_location("install_s3prl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_venv(tmp_path: Path, s3prl_parent: Path) -> Path:
    """A venv whose python imports `s3prl` from `s3prl_parent` (and nothing from the real venv's s3prl)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{s3prl_parent}" exec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    return venv


def test_the_installed_s3prl_here_is_a_source_tree():
    script = load_script()
    pkg = script.package_dir(sys.executable)
    assert script.is_source_tree(pkg), f"{pkg} lacks {script.missing_markers(pkg)}"


def test_an_sdist_like_package_is_not_a_source_tree_and_require_fails_in_one_line(tmp_path):
    script = load_script()
    sdist = tmp_path / "site" / "s3prl"
    (sdist / "downstream" / "ctc").mkdir(parents=True)
    (sdist / "__init__.py").write_text("")
    assert script.missing_markers(sdist) == list(script.SOURCE_MARKERS)
    venv = fake_venv(tmp_path, sdist.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("S3PRL_SRC", "DSCORE_ROOT")}
    env["PATH"] = str(venv / "bin")  # no git: the clone fails at once, as without network
    proc = subprocess.run([sys.executable, str(SCRIPT), "--venv", str(venv), "--require"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "set S3PRL_SRC" in proc.stderr
    plain = subprocess.run([sys.executable, str(SCRIPT), "--venv", str(venv)], env=env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert plain.returncode == 0 and "keeping the PyPI sdist" in plain.stderr  # make demo goes on


def test_an_archive_is_unpacked_once(tmp_path):
    script = load_script()
    tree = tmp_path / "src" / "tree-1234"
    (tree / "s3prl").mkdir(parents=True)
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="tree-1234")
    dest = tmp_path / "unpacked"
    assert script.tree_from(str(archive), dest) == dest / "tree-1234" and (dest / "tree-1234" / "s3prl").is_dir()
    (dest / "tree-1234" / "marker").write_text("kept")
    assert script.tree_from(str(archive), dest) == dest / "tree-1234"
    assert (dest / "tree-1234" / "marker").read_text() == "kept"  # not unpacked again


def leftover(pkg: Path) -> None:
    """What pip leaves of a PyPI s3prl in which SID and ASV ran before the caches moved (no __init__.py)."""
    for rel in ("downstream/voxceleb1/.cache/train.pkl", "downstream/voxceleb1/.cache/pruned_upstream/live.json",
                "downstream/sv_voxceleb1/.wav_lengths/Voxceleb1_length.pt", "downstream/__pycache__/x.cpython-311.pyc"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(b"x")


def source_tree(root: Path) -> Path:
    script = load_script()
    for rel in ("__init__.py", *script.SOURCE_MARKERS):
        (root / "s3prl" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "s3prl" / rel).write_text("")
    return root


def test_a_leftover_cache_directory_is_removed_and_the_source_tree_is_imported(tmp_path):
    """`make demo` (PyPI s3prl) then `S3PRL_SRC=... make test`: the leftover namespace directory goes."""
    script = load_script()
    site, tree = tmp_path / "site", source_tree(tmp_path / "tree")
    leftover(site / "s3prl")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}:{tree}" exec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DSCORE_ROOT"} | {"S3PRL_SRC": str(tree)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--venv", str(venv), "--require"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (site / "s3prl").exists() and f"removed {site / 's3prl'}" in proc.stdout
    assert script.package_dir(str(python)) == tree / "s3prl"


def test_caches_inside_an_installed_copy_are_removed_and_nothing_else(tmp_path):
    script = load_script()
    pkg = tmp_path / "site" / "s3prl"
    leftover(pkg)
    (pkg / "__init__.py").write_text("")
    (pkg / "downstream" / "voxceleb1" / "dataset.py").write_text("")
    python = fake_venv(tmp_path, pkg.parent) / "bin" / "python"
    removed = script.clear_leftovers(str(python))
    assert sorted(p.relative_to(pkg).as_posix() for p in removed) == sorted(script.LEFTOVERS)
    assert (pkg / "downstream/voxceleb1/dataset.py").is_file() and (pkg / "__init__.py").is_file()
    assert (pkg / "downstream/__pycache__/x.cpython-311.pyc").is_file()  # Python's own: kept
    assert script.clear_leftovers(str(python)) == []


def test_a_leftover_with_other_files_is_kept_and_the_command_to_remove_it_printed(tmp_path):
    script = load_script()
    pkg = tmp_path / "site" / "s3prl"
    leftover(pkg)
    (pkg / "notes.txt").write_text("someone's")
    python = fake_venv(tmp_path, pkg.parent) / "bin" / "python"
    with pytest.raises(SystemExit) as info:
        script.clear_leftovers(str(python))
    assert f"rm -rf {pkg}" in str(info.value) and "\n" not in str(info.value)
    assert (pkg / "notes.txt").is_file() and (pkg / "downstream/voxceleb1/.cache/train.pkl").is_file()


def test_the_sdist_message_names_the_tasks_that_run_on_it(tmp_path):
    """On a copy without the source tree's files: KS, IC and QbE; SID with its own split list; never 'only KS and IC'."""
    script = load_script()
    sdist = tmp_path / "s3prl"
    (sdist / "downstream").mkdir(parents=True)
    text = script.runnable_tasks(sys.executable, sdist)
    assert text.startswith("KS, IC, QbE run on it; ") and "SID" in text.split(";")[1]
    assert "source tree" in text
