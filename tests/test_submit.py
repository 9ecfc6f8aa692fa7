"""`pruned-upstream submit`: predict.zip equals what s3prl's own submit.py packs from the card's expdirs.

A synthetic RESULTS_DIR in superb-all's layout (scripts/run_superb.sh) holds small
prediction files for all fifteen public entries: ER's five folds, ASR with and
without the LM, QbE's dev and test runs of two layers, ASV's states-N directories,
SD's scoring/predictions and frame_shift. s3prl's submit.py runs unchanged from the
installed source tree on the directories model_card.json names; the two zips must
hold the same member names and the same bytes per member (timestamps, member order
and compression are zip metadata and may differ).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pruned_upstream.cli import main
from pruned_upstream.s3prl_plugin.preflight import installed_s3prl_root
from pruned_upstream.superb.submission import ARGS

SUBMIT_PY = installed_s3prl_root() / "submit" / "submit.py"


def _expdir(root: Path, name: str, downstream: str, *, config: dict | None = None, files: dict | None = None,
            **args) -> Path:
    d = root / name
    d.mkdir(parents=True)
    lines = [f"downstream: {downstream}", "upstream_ckpt: /nonexistent/model.safetensors"]
    lines += [f"{k}: {v}" for k, v in args.items()]
    (d / "args_2026-12-07-10-00-00.yaml").write_text("\n".join(lines) + "\n")
    if config:
        (d / "config_2026-12-07-10-00-00.yaml").write_text(json.dumps(config) + "\n")  # JSON is YAML
    for rel, text in (files or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(text if isinstance(text, bytes) else text.encode())
    return d


def make_results(root: Path) -> Path:
    """All fifteen entries, each prediction file with its own bytes."""
    root.mkdir()
    ctc = lambda corpus: {"downstream_expert": {"corpus": {"name": corpus}}}  # noqa: E731
    _expdir(root, "PR", "ctc", config=ctc("libriphone"),
            files={"stdout.log": "test per: 0.25\n", "test-hyp.ark": "utt1 sil ah b\n"})
    _expdir(root, "SF", "ctc", config=ctc("snips"),
            files={"stdout.log": "test slot_type_f1: 0.8\ntest slot_value_cer: 0.3\n", "test-hyp.ark": "utt sf\n"})
    for name, down, pred in (("KS", "speech_commands", "test_predict.txt"), ("IC", "fluent_commands",
                             "test_predict.csv"), ("SID", "voxceleb1", "test_predict.txt")):
        _expdir(root, name, down, files={"log.log": "test at step 4: 0.5\nNew best on dev at step 4: 0.5\n"
                                         "test at step 0: 0.75\n", pred: f"{name} predictions\n"})
    for n in range(1, 6):
        _expdir(root, f"ER_fold{n}", "emotion", config={"downstream_expert": {"datarc": {"test_fold": f"fold{n}"}}},
                files={"log.log": "test at step 0: 0.6\n", f"test_fold{n}_predict.txt": f"Ses0{n} neu\n"})
    _expdir(root, "ASR", "asr", files={"stdout.log": "test-clean wer: 12.5\n", "test-clean-noLM-hyp.ark": "a b\n",
                                       "test-clean-LM-hyp.ark": "a c\n"})
    for layer, dev in ((0, 0.1), (1, 0.3)):  # layer 1 is best on dev, whatever test says
        for split, value in (("dev", dev), ("test", 0.9 - dev)):
            _expdir(root, f"QbE_{split}_layer{layer}", "quesst14_dtw", upstream_layer_selection=layer,
                    evaluate_split=split,
                    files={"score_twv_ours.log": f"actTWV: {value} maxTWV: {value} Threshold: 0.5\n",
                           "benchmark.stdlist.xml": f"<stdlist layer='{layer}' split='{split}'/>\n"})
    asv = _expdir(root, "ASV", "sv_voxceleb1", files={"train.done": ""})
    for step, eer in ((20, 0.12), (40, 0.05), (60, 0.08)):  # states-40 has the lowest EER
        (asv / f"states-{step}.ckpt").write_bytes(b"PK")
        (asv / f"states-{step}").mkdir()
        (asv / f"states-{step}" / "log.txt").write_text(f"[x] sv-voxceleb1/test-EER: {eer}\n")
        (asv / f"states-{step}" / "test_predict.txt").write_text(f"{eer} id1 id2\n")
    _expdir(root, "SD", "diarization", files={
        "scoring/result_th0.5_med1": "*** OVERALL ***  12.00  30.00\n", "frame_shift": "320\n",
        "scoring/predictions/mix1.h5": bytes(range(256)) * 4, "scoring/predictions/mix2.h5": b"\x89HDF\r\n"})
    return root


def run_cli(*argv) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "pruned_upstream.cli", *argv], capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def s3prl_submit(card_path: Path, out: Path) -> Path:
    """s3prl's submit.py, unchanged, on the card's expdirs (resolved against the card's folder)."""
    card = json.loads(card_path.read_text())
    argv = [f"--{arg}={(card_path.parent / path).resolve()}" for arg, path in card["submission"]["expdirs"].items()]
    proc = subprocess.run([sys.executable, str(SUBMIT_PY), *argv, "--output_dir", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "predict.zip"


def zip_contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def assert_same_zip(ours: Path, theirs: Path) -> dict[str, bytes]:
    a, b = zip_contents(ours), zip_contents(theirs)
    assert sorted(a) == sorted(b)
    assert all(a[name] == b[name] for name in a), [name for name in a if a[name] != b[name]]
    return a


def test_all_fifteen_entries_match_s3prls_submit_py(tmp_path):
    results = make_results(tmp_path / "small")
    code, out, err = run_cli("submit", str(results))
    assert code == 0, err
    sub = results / "submission"
    card = json.loads((sub / "model_card.json").read_text())
    assert list(card["submission"]["expdirs"]) == list(ARGS) and card["submission"]["missing"] == {}
    assert card["submission"]["expdirs"]["sv"] == "../ASV/states-40"  # lowest test EER
    assert card["submission"]["expdirs"]["qbe"] == "../QbE_test_layer1"  # best dev MTWV
    assert card["submission"]["expdirs"]["pr"] == "../PR"
    ours = assert_same_zip(sub / "predict.zip", s3prl_submit(sub / "model_card.json", tmp_path / "s3prl"))
    tasks = {name.split("/")[1] for name in ours if name.count("/") >= 2}
    assert len(tasks) == 15 and "asr_lm_public" in tasks and "sv_public" in tasks
    assert ours["predict/sv_public/predict.txt"] == b"0.05 id1 id2\n"
    assert ours["predict/qbe_public/benchmark.stdlist.xml"] == b"<stdlist layer='1' split='test'/>\n"
    assert ours["predict/sd_public/frame_shift"] == b"320\n"
    assert card["metrics"]["ER"] == pytest.approx(60.0) and card["metrics"]["KS"] == pytest.approx(75.0)
    assert card["metrics"]["ASV"] == pytest.approx(5.0) and card["metrics"]["QbE"] == pytest.approx(60.0)
    assert set(card["superb_score"]) == {"paper", "leaderboard"}
    assert card["superb_score"]["paper"]["partial"] is False
    assert card["versions"]["s3prl_commit"].startswith("ec8064b5")
    assert "sha256" not in card["upstream"] and "not a regular file" in card["upstream"]["note"]
    assert "--asr_with_lm" in (sub / "model_card.md").read_text()
    # --check-s3prl: the same comparison, by the command itself
    code, out, err = run_cli("submit", str(results), "--out", str(tmp_path / "checked"), "--check-s3prl")
    assert code == 0 and "checked: s3prl's submit.py (15 arguments) packs the same" in out, out + err


def test_a_missing_fold_is_one_line_and_no_zip(tmp_path):
    results = make_results(tmp_path / "small")
    (results / "ER_fold3" / "test_fold3_predict.txt").unlink()
    code, _, err = run_cli("submit", str(results))
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("missing: ")]
    assert len(lines) == 1 and lines[0].startswith("missing: --er_fold3: no test_fold3_predict.txt in ")
    assert not (results / "submission" / "predict.zip").exists()


def test_an_untested_run_is_missing_not_training_predictions(tmp_path):
    """KS wrote test_predict.txt while training; without the -m evaluate line, it is not the dev-best's."""
    results = make_results(tmp_path / "small")
    (results / "KS" / "log.log").write_text("test at step 4: 0.5\nNew best on dev at step 4: 0.5\n")
    code, _, err = run_cli("submit", str(results))
    assert code == 1 and "missing: --ks: " in err and "test at step 0" in err


def test_allow_missing_packs_the_rest_and_lists_what_is_left_out(tmp_path):
    results = make_results(tmp_path / "small")
    (results / "ER_fold3" / "test_fold3_predict.txt").unlink()
    (results / "ASR" / "test-clean-LM-hyp.ark").unlink()
    out = tmp_path / "elsewhere"
    code, stdout, err = run_cli("submit", str(results), "--allow-missing", "--out", str(out))
    assert code == 0, err
    assert "left out: er_fold3 asr_with_lm" in stdout
    assert "left out: --asr_with_lm: " in err and "LM decoding" in err
    card = json.loads((out / "model_card.json").read_text())
    assert set(card["submission"]["missing"]) == {"er_fold3", "asr_with_lm"}
    assert card["submission"]["expdirs"]["pr"] == os.path.relpath(results / "PR", out)
    ours = assert_same_zip(out / "predict.zip", s3prl_submit(out / "model_card.json", tmp_path / "s3prl"))
    assert "predict/er_fold3_public/predict.txt" not in ours and "predict/asr_public/predict.ark" in ours


def test_a_link_out_of_results_dir_is_refused(tmp_path):
    results = make_results(tmp_path / "small")
    secret = tmp_path / "secret.txt"
    secret.write_text("not a prediction\n")
    target = results / "PR" / "test-hyp.ark"
    target.unlink()
    target.symlink_to(secret)
    code, _, err = run_cli("submit", str(results), "--allow-missing")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "symbolic link" in err and "test-hyp.ark" in err
    assert not (results / "submission" / "predict.zip").exists()


def test_a_linked_expdir_is_refused(tmp_path):
    results = make_results(tmp_path / "small")
    (results / "SID").rename(tmp_path / "SID_outside")
    (results / "SID").symlink_to(tmp_path / "SID_outside")
    code, _, err = run_cli("submit", str(results))
    assert code == 1 and "SID is a symbolic link" in err and len(err.strip().splitlines()) == 1


def test_a_fifo_prediction_is_refused_without_blocking(tmp_path):
    results = make_results(tmp_path / "small")
    target = results / "KS" / "test_predict.txt"
    target.unlink()
    os.mkfifo(target)
    code, _, err = run_cli("submit", str(results), "--allow-missing")  # the timeout in run_cli: no hang
    assert code == 1 and "not a regular file" in err and len(err.strip().splitlines()) == 1


def test_the_card_measures_the_upstream_and_records_the_run(tmp_path):
    from s3prl_fixtures import make_tiny_wavlm

    from pruned_upstream.checkpoints import load_model
    from pruned_upstream.macs import SUPERB_LENGTHS, superb_macs

    results = make_results(tmp_path / "small")
    ckpt = make_tiny_wavlm(tmp_path / "tiny.pt")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("teacher:\n  preset: tiny\n  seed: 3\nprune:\n  target_sparsity: 0.75\n")
    code, _, err = run_cli("submit", str(results), "--upstream", str(ckpt), "--run-dir", str(run))
    assert code == 0, err
    card = json.loads((results / "submission" / "model_card.json").read_text())
    model = load_model(ckpt)
    import hashlib

    assert card["upstream"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert card["upstream"]["params"] == sum(p.numel() for p in model.parameters()) > 0
    assert card["upstream"]["macs"] == superb_macs(model.arch, SUPERB_LENGTHS, leaderboard=True)
    assert card["teacher"] == {"preset": "tiny", "seed": 3}
    assert card["pruning_config"]["prune"] == {"target_sparsity": 0.75}
    assert "parameters:" in (results / "submission" / "model_card.md").read_text()


def test_asv_waits_for_every_checkpoint_to_be_tested(tmp_path):
    results = make_results(tmp_path / "small")
    (results / "ASV" / "states-80.ckpt").write_bytes(b"PK")  # saved, not tested yet
    code, _, err = run_cli("submit", str(results))
    assert code == 1 and "missing: --sv: " in err and "states-80.ckpt not tested yet" in err
