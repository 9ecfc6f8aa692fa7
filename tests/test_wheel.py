"""A built wheel carries the SUPERB configs and the ten-task script, and runs `superb` without the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from s3prl_fixtures import make_speech_commands, make_tiny_wavlm

ROOT = Path(__file__).resolve().parent.parent
TASK_CONFIGS = ("pr", "ks", "ic", "sid", "er", "asr", "qbe", "sf", "asv", "sd")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the tracked files, installed (no deps) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp / "src"
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, stdin=subprocess.DEVNULL)
    (wheel,) = (tmp / "dist").glob("pruned_upstream-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   stdin=subprocess.DEVNULL)
    return wheel, tmp / "site"


def test_the_wheel_ships_configs_and_script(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "pruned_upstream/package_data"
    assert {f"{data}/downstream_configs/{t}.yaml" for t in TASK_CONFIGS} <= names
    assert {f"{data}/scripts/run_superb.sh", f"{data}/downstream_configs/README.md"} <= names
    assert "pruned_upstream/configs/wavlm_base_sp80.yaml" in names  # the training configs too


def _run(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install of the checkout
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def test_the_installed_package_finds_its_own_configs(installed, tmp_path):
    _, site = installed
    code = ("import pruned_upstream, pruned_upstream.s3prl_plugin.tasks as t; "
            "print(pruned_upstream.__file__); print(t.config_path('KS'))")
    out = _run(site, tmp_path, "-c", code)
    assert out.returncode == 0, out.stderr
    module, config = out.stdout.split()
    assert Path(module).is_relative_to(site) and Path(config).is_relative_to(site)
    assert Path(config).read_text() == (ROOT / "downstream_configs" / "ks.yaml").read_text()


@pytest.mark.slow
def test_the_installed_package_runs_superb_with_its_default_config(installed, tmp_path):
    _, site = installed
    roots = make_speech_commands(tmp_path / "data")
    make_tiny_wavlm(tmp_path / "tiny.pt")
    override = ",,".join([
        *(f"config.downstream_expert.datarc.{key}={path}" for key, path in roots.items()),
        "config.downstream_expert.datarc.num_workers=0", "config.downstream_expert.datarc.batch_size=4",
        "config.runner.total_steps=2", "config.runner.eval_step=2", "config.runner.save_step=2",
        "config.runner.log_step=1",
    ])
    out = _run(site, tmp_path, "-m", "pruned_upstream.cli", "superb", "-m", "train", "-u", "pruned_wavlm_local",
               "-k", "tiny.pt", "-d", "speech_commands", "-o", override, "-p", "exp")
    assert out.returncode == 0, out.stderr[-3000:]
    header = (tmp_path / "exp" / "stdout.log").read_text().splitlines()[0]
    assert f"-c {site}/pruned_upstream/package_data/downstream_configs/ks.yaml" in header  # the default -c
    assert (tmp_path / "exp" / "states-2.ckpt").is_file()
