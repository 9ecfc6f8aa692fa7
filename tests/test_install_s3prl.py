"""scripts/install_s3prl.py: a source tree is recognised by its files; without one, `--require` fails in one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

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
