"""The demo's submission step (demo_superb.write_submission) and the report's card section."""

from __future__ import annotations

import zipfile
from types import SimpleNamespace

from test_submit import make_results

from pruned_upstream.demo_report import submission_section
from pruned_upstream.demo_superb import REDUCED, write_submission


def test_the_demo_packs_a_submission_and_the_report_shows_its_card(tmp_path):
    results = make_results(tmp_path / "pruned")
    (results / "SD" / "frame_shift").unlink()
    (results / "ASR" / "test-clean-LM-hyp.ark").unlink()  # one entry missing: packed with the others
    card, note = write_submission(results, tmp_path / "no-upstream.safetensors")
    assert card == results / "submission" / "model_card.md"
    assert "--asr_with_lm" in note and "ASR_KENLM_MODEL" in note
    with zipfile.ZipFile(results / "submission" / "predict.zip") as archive:
        names = set(archive.namelist())
    assert "predict/er_fold5_public/predict.txt" in names and "predict/asr_lm_public/predict.ark" not in names
    lines = submission_section(SimpleNamespace(submission=card, submission_note=note))
    text = "\n".join(lines)
    assert "## Leaderboard submission (pruned upstream)" in text and "### Model card" in text
    assert str(results / "submission" / "predict.zip") in text and "| --sv | `../ASV/states-40` |" in text
    assert "- left out: --asr_with_lm" in text
    # s3prl's own submit.py (source tree installed by `make test`) packs the same files from the card's dirs
    assert "- checked: s3prl's submit.py (14 arguments) packs the same" in text and "byte for byte" in text


def test_check_with_s3prl_submit_finds_a_difference(tmp_path):
    """A prediction rewritten after our zip was made: s3prl's submit.py packs other bytes, and the check says which."""
    from pruned_upstream.s3prl_plugin.submit_check import check_with_s3prl_submit

    results = make_results(tmp_path / "pruned")
    card, _ = write_submission(results, tmp_path / "no-upstream.safetensors")
    same, message = check_with_s3prl_submit(card.with_suffix(".json"))
    assert same is True, message
    (results / "KS" / "test_predict.txt").write_text("tampered\n")
    same, message = check_with_s3prl_submit(card.with_suffix(".json"))
    assert same is False and "different bytes ['predict/ks_public/predict.txt']" in message, message


def test_no_submission_is_said_in_the_report(tmp_path):
    card, note = write_submission(tmp_path / "absent", tmp_path / "x.safetensors")
    assert card is None and note.startswith("no submission: ")
    text = "\n".join(submission_section(SimpleNamespace(submission=None, submission_note=note)))
    assert "No predict.zip was written: no submission: " in text
    assert "five folds" in REDUCED and "language model" in REDUCED
