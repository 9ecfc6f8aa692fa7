"""The embedded default end to end (quick): corpus, prune, export, bench, s3prl KS, report."""

from __future__ import annotations

import json
import zipfile

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
    # the ten SUPERB tasks ran through s3prl's runner for both upstreams, and the score file says so
    rows = json.loads((out / "superb_score.json").read_text())
    assert [r["model"] for r in rows] == ["teacher", "pruned"]
    for row in rows:
        assert not row["partial"] and set(row["points"]) == {
            "PR", "KS", "IC", "SID", "ER", "ASR", "QbE", "SF", "ASV", "SD"}
        assert row["qbe_scorer"] == "ours"
    for task in ("PR", "KS", "SID", "ER_fold1", "ASV", "SD"):
        assert (out / "superb" / "pruned" / task / "stdout.log").is_file(), task
    table = report[report.index("## The ten SUPERB tasks"):]
    metrics = ("PR", "KS", "IC", "SID", "ER", "ASR", "QbE", "SF-F1", "SF-CER", "ASV", "SD")
    metric_rows = [line for line in table.splitlines() if line.split(" (")[0].removeprefix("| ") in metrics]
    assert [line.split(" (")[0][2:] for line in metric_rows] == list(metrics)
    assert all(cell.strip() not in ("-", "") for line in metric_rows for cell in line.split("|")[2:4])
    assert f"| score | {rows[0]['score']:.1f} | {rows[1]['score']:.1f} |" in table
    assert "Reduced protocol" in table and "not QUESST14's official scorer" in table
    # the pruned upstream's submission: ER's five folds, ASV's choice, ASR with the small LM, the card shown
    with zipfile.ZipFile(out / "superb" / "pruned" / "submission" / "predict.zip") as archive:
        names = set(archive.namelist())
    assert {"predict/asr_lm_public/predict.ark", "predict/er_fold5_public/predict.txt",
            "predict/sv_public/predict.txt"} <= names
    assert "## Leaderboard submission (pruned upstream)" in report and "### Model card" in report
    assert "- checked: s3prl's submit.py (15 arguments) packs the same" in report  # its own submit.py agrees
    # what pruning keeps: the pre-trained teacher, the random one it started from, the magnitude baseline
    pretraining = json.loads((out / "pretrain.json").read_text())
    assert [it["steps"] for it in pretraining["iterations"]] == [15, 15]
    baseline = load_model(out / "magnitude.safetensors")
    counts = lambda m: [(sorted((h.qk, h.vo) for h in l.heads), l.ffn_dim) for l in m.arch.layers]  # noqa: E731,E741
    assert baseline.num_params() == model.num_params() and counts(baseline) == counts(model)
    assert load_model(out / "teacher_random.safetensors").num_params() == teacher.num_params()
    compared = json.loads((out / "superb_compare.json").read_text())
    assert sorted(compared) == ["magnitude", "pruned", "random", "teacher"]
    assert all(set(per) == {"1337"} and set(per["1337"]) == {"KS"} for per in compared.values())
    keeps = report[report.index("## What pruning keeps"):report.index("## The ten SUPERB tasks")]
    assert "| KS | 8.3 |" in keeps and "| magnitude baseline |" in keeps and "## The teacher's pre-training" in report

def test_demo_says_how_to_install_espeak_when_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on the PATH
    assert main(["demo", "--out", str(tmp_path / "d"), "--quick"]) != 0
    assert "apt-get install espeak-ng" in capsys.readouterr().err


def test_without_s3prl_source_tree_the_demo_names_what_is_missing(tmp_path, monkeypatch):
    """An s3prl without the files of its source tree (the PyPI sdist): those tasks are named, with the remedy."""
    from pruned_upstream.demo_superb import unavailable_tasks
    from pruned_upstream.s3prl_plugin import preflight
    from pruned_upstream.superb_data.bundle import SmallSuperb

    sdist = tmp_path / "s3prl"  # a package directory with nothing of the source tree
    (sdist / "downstream").mkdir(parents=True)
    monkeypatch.setattr(preflight, "installed_s3prl_root", lambda: sdist)
    monkeypatch.setenv("DSCORE_ROOT", str(tmp_path / "dscore"))
    bundle = SmallSuperb(root=tmp_path, seed=0, steps=1, env={}, overrides={}, reused=False)
    missing = unavailable_tasks(bundle)
    for task in ("PR", "SF", "ASR", "SID", "ER", "ASV"):
        assert task in missing and "git clone" in missing[task], task
    monkeypatch.setattr(preflight, "installed_s3prl_root", lambda: None)
    assert all("s3prl is not installed" in why for why in unavailable_tasks(bundle).values())


@pytest.mark.parametrize("family", ["hubert", "wav2vec2"])
def test_demo_prunes_and_exports_a_teacher_of_each_family(tmp_path, family):
    """`demo --family F`'s pruning and export steps: the tiny random teacher, the student and the file are F."""
    from training_fixtures import write_manifest

    from pruned_upstream.demo import export_models, prune

    (tmp_path / "audio").mkdir()
    manifest = write_manifest(tmp_path / "audio", 8, seed=2)
    run_dir = prune(tmp_path, manifest, quick=True, family=family)
    assert run_dir.name == f"run_{family}"
    model_path, teacher_path, summary = export_models(tmp_path, run_dir)
    model, teacher = load_model(model_path), load_model(teacher_path)
    assert model.arch.family == teacher.arch.family == family
    assert not teacher.arch.relative_position_embedding and not model.arch.gru_rel_pos
    assert model.num_params() == summary["params"] < teacher.num_params()
