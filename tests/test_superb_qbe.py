"""QbE (query-by-example): our QUESST14-style database, s3prl's quesst14_dtw per layer, our MTWV, the layer choice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pruned_upstream.s3prl_plugin import qbe_eval
from pruned_upstream.superb import mtwv
from pruned_upstream.superb.results import read_expdir, read_results
from pruned_upstream.superb.s3prl_logs import is_our_mtwv
from pruned_upstream.superb_data.quesst14 import AUDIO_SR, GAP_MS, SPLIT_QUERIES, make_quesst14

S3PRL_SPLIT = {"dev": "dev", "test": "eval"}  # -t test reads language_key_eval.lst


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    return make_quesst14(tmp_path_factory.mktemp("quesst"), seed=0)


def lst(db: Path, name: str) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in (db / "scoring" / name).read_text().splitlines()]


def test_layout_as_s3prl_and_the_scorer_read_it(database):
    db = database
    assert db.name == "quesst14Database"
    for name, folder in (("utterances", "Audio"), ("dev", "dev_queries"), ("eval", "eval_queries")):
        entries = lst(db, f"language_key_{name}.lst")
        assert {lang for _, lang in entries} == {"nnenglish", "czech"}
        for path, _ in entries:
            assert path.startswith(f"quesst14Database/{folder}/quesst14_")
            local = db / re.sub(r"^.*?\/", "", path)  # s3prl's quesst14_dtw/dataset.py english_audio_paths
            assert local.is_file() and sf.info(local).samplerate == AUDIO_SR
    for split in ("dev", "eval"):
        truth = mtwv.read_groundtruth(db / "scoring" / f"groundtruth_quesst14_{split}")
        assert len(truth.terms) == len(SPLIT_QUERIES[split]) + 1 and len(truth.utterances) == 16
        english = [q for q, lang in ((Path(p).stem, lang) for p, lang in lst(db, f"language_key_{split}.lst"))
                   if lang == "nnenglish"]
        for q in english:  # every English query occurs in two utterances
            assert sum((q, u) in truth.occurrences for u in truth.utterances) == 2


def test_query_positions_are_exact(database):
    """Inside [tbeg, tbeg + dur] the utterance speaks; the GAP_MS pauses around it are (nearly) silent."""
    rttm = (database / "scoring" / "groundtruth_quesst14_dev" / "quesst14_dev.rttm").read_text().splitlines()
    assert rttm and all(line.startswith("LEXEME quesst14_") for line in rttm)
    for line in rttm:
        _, utt, _, tbeg, dur, query, *_ = line.split()
        wav, sr = sf.read(database / "Audio" / f"{utt}.wav")
        start, end = int(float(tbeg) * sr), int((float(tbeg) + float(dur)) * sr)
        gap = GAP_MS * sr // 1000
        word = np.abs(wav[start:end]).max()
        before, after = np.abs(wav[start - gap + 8: start - 8]).max(), np.abs(wav[end + 8: end + gap - 8]).max()
        assert word > 0.3 and before < 0.1 * word and after < 0.1 * word, (utt, query)


def test_s3prl_dataset_keeps_the_english_entries(database):
    import s3prl.downstream.quesst14_dtw.dataset as dataset
    for split in ("dev", "eval"):
        data = dataset.QUESST14Dataset(split, dataset_root=str(database))
        assert (data.n_queries, data.n_docs) == (len(SPLIT_QUERIES[split]), 15)
        wav, name = data[0]
        assert name == f"quesst14_{split}_0000" and wav.ndim == 1 and 0.2 * 16000 < len(wav) < 1.5 * 16000


def oracle_stdlist(truth: mtwv.GroundTruth, english: set[str], path: Path) -> None:
    """A perfect system on the trials s3prl scores (English queries x English utterances)."""
    lines = ['<stdlist termlist_filename="benchmark.stdlist.xml" system_id="oracle">']
    for q in sorted(english & set(truth.terms)):
        lines.append(f'  <detected_termlist termid="{q}">')
        for u in sorted(english & set(truth.utterances)):
            hit = (q, u) in truth.occurrences
            lines.append(f'    <term file="{u}" channel="1" tbeg="0.000" dur="0.00" score="{3.0 if hit else -1.0}" '
                         f'decision="{"YES" if hit else "NO"}"/>')
        lines.append("  </detected_termlist>")
    path.write_text("\n".join(lines + ["</stdlist>"]) + "\n")


def test_oracle_system_and_the_unscored_czech_trials(database, tmp_path):
    """Dev: the Czech query occurs (in the Czech utterance) but s3prl never searches it: its trials
    take the default score -10, a miss at every threshold above it, so a perfect English system gets
    MTWV = 1 - (0 + 0 + 0 + 1) / 4 = 0.75. Eval: the Czech query occurs nowhere and is not scored: 1.0."""
    english = {Path(p).stem for name in ("utterances", "dev", "eval")
               for p, lang in lst(database, f"language_key_{name}.lst") if lang == "nnenglish"}
    for split, expected in (("dev", 0.75), ("eval", 1.0)):
        truth = mtwv.read_groundtruth(database / "scoring" / f"groundtruth_quesst14_{split}")
        (tmp_path / split).mkdir()
        oracle_stdlist(truth, english, tmp_path / split / mtwv.STDLIST)
        result = mtwv.score_expdir(tmp_path / split, database / "scoring" / f"groundtruth_quesst14_{split}")
        assert result.max_twv == pytest.approx(expected) and result.act_twv == pytest.approx(expected)


def fake_scored_expdir(out: Path, split: str, layer: int, value: float) -> None:
    expdir = qbe_eval.expdir_of(out, split, layer)
    expdir.mkdir(parents=True)
    (expdir / mtwv.OURS_LOG).write_text(f"actTWV: 0.0  maxTWV: {value}  Threshold: 1.0\n")
    (expdir / "args_2024-01-01-00-00-00.yaml").write_text(
        f"downstream: quesst14_dtw\nevaluate_split: {split}\nupstream_layer_selection: {layer}\n")


def test_layer_choice_by_dev(tmp_path, database):
    """Already-scored expdirs are not run again; the best dev layer's test MTWV is reported."""
    dev, test = {0: 0.10, 1: 0.30, 2: 0.20}, {0: 0.50, 1: 0.25, 2: 0.40}
    for layer in dev:
        fake_scored_expdir(tmp_path, "dev", layer, dev[layer])
        fake_scored_expdir(tmp_path, "test", layer, test[layer])
    result = qbe_eval.run_qbe(tmp_path / "no-ckpt.pt", database, tmp_path, layers=[0, 1, 2])
    assert (result.best_layer, result.test_mtwv, result.scorer) == (1, 0.25, "ours")
    assert json.loads((tmp_path / qbe_eval.SUMMARY).read_text())["best_layer"] == 1
    model = read_results(tmp_path)[0]  # the `score` command's reader makes the same choice
    assert model.metrics["QbE"] == pytest.approx(25.0) and "QbE_test_layer1" in model.sources["QbE"]


@pytest.mark.slow
def test_dtw_per_layer_end_to_end(database, tmp_path):
    from s3prl_fixtures import make_tiny_wavlm

    ckpt = make_tiny_wavlm(tmp_path / "tiny.pt")
    assert qbe_eval.count_hidden_states(ckpt) == 3  # 2 layers -> 3 hidden states
    out = tmp_path / "qbe"
    override = "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.max_workers=2"
    result = qbe_eval.run_qbe(ckpt, database, out, override=override)
    assert sorted(result.dev_mtwv) == sorted(result.all_test_mtwv) == [0, 1, 2] and result.scorer == "ours"
    assert result.best_layer == max(result.dev_mtwv, key=lambda k: (result.dev_mtwv[k], -k))
    for layer in range(3):
        for split in qbe_eval.SPLITS:
            expdir = qbe_eval.expdir_of(out, split, layer)
            trials = mtwv.read_stdlist(expdir / mtwv.STDLIST)
            queries = {q for q, _ in trials}
            assert len(queries) == 3 and len(trials) == 3 * 15  # English queries x English utterances
            assert all(q.startswith(f"quesst14_{S3PRL_SPLIT[split]}_") for q in queries)
            assert "not QUESST14's official scorer" in (expdir / mtwv.OURS_LOG).read_text()
            run = read_expdir(expdir)
            assert (run.task, run.split, run.layer) == ("QbE", split, layer)
            assert -1000.0 <= run.metrics["QbE"] <= 100.0 and is_our_mtwv(run.sources["QbE"])
            value = {"dev": result.dev_mtwv, "test": result.all_test_mtwv}[split][layer]
            assert run.metrics["QbE"] == pytest.approx(100.0 * value)
            assert 0.0 <= value <= 1.0
    model = read_results(out)[0]
    assert model.metrics["QbE"] == pytest.approx(100.0 * result.test_mtwv)
    assert f"QbE_test_layer{result.best_layer}" in model.sources["QbE"] and is_our_mtwv(model.sources["QbE"])
    # a second call reuses every scored expdir (no s3prl run): same answer
    again = qbe_eval.run_qbe(ckpt, database, out, override=override)
    assert (again.best_layer, again.dev_mtwv, again.all_test_mtwv) == (result.best_layer, result.dev_mtwv,
                                                                       result.all_test_mtwv)


def test_database_is_deterministic(database, tmp_path):
    import hashlib

    def digest(db: Path) -> dict[str, str]:
        return {str(p.relative_to(db)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(db.rglob("*")) if p.is_file()}

    assert digest(make_quesst14(tmp_path, seed=0)) == digest(database)
