"""The embedded default end to end (quick): corpus, prune, export, bench, s3prl KS, report."""

from __future__ import annotations

import json

import pytest

from pruned_upstream import load_model
from pruned_upstream.cli import main


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    report = (out / "report.md").read_text()
    summary = json.loads((out / "run" / "summary.json").read_text())
    model, teacher = load_model(out / "model.safetensors"), load_model(out / "teacher.safetensors")
    assert model.num_params() == summary["params"] < teacher.num_params()
    assert 0.0 < summary["sparsity"] < 1.0
    for png in ("mask_trajectories", "kept_params_per_layer", "sparsity"):
        assert f"run/plots/{png}.png" in report and (out / "run" / "plots" / f"{png}.png").stat().st_size > 1000
    # the KS step ran through s3prl's runner for both upstreams and the score parser read it back
    assert (out / "superb" / "ks_pruned" / "stdout.log").exists()
    ks_lines = [line for line in report.splitlines() if line.startswith(("| teacher |", "| pruned |"))]
    assert len(ks_lines) == 4 and all(line.split("|")[-2].strip() not in ("-", "") for line in ks_lines)
    assert "SUPERB score line" in report


def test_demo_says_how_to_install_espeak_when_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on the PATH
    assert main(["demo", "--out", str(tmp_path / "d"), "--quick"]) != 0
    assert "apt-get install espeak-ng" in capsys.readouterr().err
