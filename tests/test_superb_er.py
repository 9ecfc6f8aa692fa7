"""SUPERB ER (emotion recognition, s3prl ``-d emotion``) end to end on a small IEMOCAP, five folds.

The data (pruned_upstream/superb_data/iemocap.py) is espeak-ng speech in
IEMOCAP's layout with its EmoEvaluation label files; s3prl's own
``IEMOCAP_preprocess.py`` turns those into the per-fold meta data. Each fold
(test = that session) trains a few steps through ``pruned-upstream superb``,
is evaluated from its checkpoint with ``-m evaluate -e``, and the SUPERB ER
number is the mean of the five test accuracies as ``read_results`` computes
it. ``make test-learning`` (pytest -m learning) adds a longer run that checks one fold
beats chance (its numbers: docs/tasks/er.md).
"""

from __future__ import annotations

import re

import pytest
import soundfile as sf
from s3prl_fixtures import make_tiny_wavlm
from superb_cli_helpers import datarc, join, log_lines, runner_overrides, superb, train_argv

from pruned_upstream.superb.results import read_expdir, read_results
from pruned_upstream.superb_data.iemocap import (LABELS, expected_meta, make_iemocap, read_meta,
                                                  run_s3prl_preprocess)

STEPS = 2
FOLDS = range(1, 6)
BLOCK = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(Ses0\d[FM]_\w+_[FM]\d{3})\t(\w{3})\t\[[\d., ]+\]$")


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    data = make_iemocap(tmp_path_factory.mktemp("er") / "IEMOCAP_full_release", per_emotion=1)
    run_s3prl_preprocess(data.root)
    return data


def test_small_iemocap_has_the_real_layout_and_label_files(iemocap):
    root = iemocap.root
    wavs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))
    assert wavs == sorted(t.rel for t in iemocap.turns)
    for rel in wavs:
        assert re.fullmatch(r"Session(\d)/sentences/wav/(Ses0\1[FM]_\w+)/\2_[FM]\d{3}\.wav", rel), rel
    info = sf.info(str(root / wavs[0]))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    for session in FOLDS:
        labels = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        assert {p.name for p in labels.iterdir() if p.is_dir()} == {"Categorical", "Attribute", "Self-evaluation"}
        blocks = [BLOCK.match(line) for f in labels.glob("*.txt") for line in f.read_text().splitlines()
                  if line.startswith("[")]
        assert all(blocks) and {m.group(4) for m in blocks} == {"neu", "hap", "ang", "sad", "exc", "fru", "xxx"}
        assert all(float(m.group(1)) < float(m.group(2)) for m in blocks)


def test_s3prl_preprocessing_gives_the_expected_folds(iemocap):
    for k in FOLDS:
        for split in ("train", "test"):
            meta = read_meta(iemocap.meta_data, k, split)
            assert meta["labels"] == LABELS
            got = sorted(meta["meta_data"], key=lambda e: e["path"])
            assert got == expected_meta(iemocap, k)[split], (k, split)
        test = read_meta(iemocap.meta_data, k, "test")["meta_data"]
        assert {e["path"].split("/")[0] for e in test} == {f"Session{k}"}
        assert {e["label"] for e in test} == set(LABELS)  # exc became hap; fru and xxx dropped


def test_a_root_containing_session_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Session"):
        make_iemocap(tmp_path / "Session0")


def er_override(data, fold: int, steps: int, lr: float | None = None) -> str:
    items = runner_overrides(steps, eval_dev_only=True) + datarc(
        root=data.root, meta_data=data.meta_data, test_fold=f"fold{fold}", num_workers=0,
        train_batch_size=4, eval_batch_size=4,
    )
    return join(items + ([f"config.optimizer.lr={lr}"] if lr else []))


def run_fold(data, ckpt, expdir, fold: int, steps: int, lr: float | None = None) -> tuple[int, int]:
    train_rc = superb(train_argv("emotion", ckpt, expdir, er_override(data, fold, steps, lr)))
    best = expdir / "dev-best.ckpt"
    best = best if best.is_file() else expdir / f"states-{steps}.ckpt"
    return train_rc, superb(["-m", "evaluate", "-e", best, "-t", "test"])


@pytest.fixture(scope="module")
def folds(iemocap, tmp_path_factory):
    out = tmp_path_factory.mktemp("er_runs")
    ckpt = make_tiny_wavlm(out / "tiny.pt")
    exps = out / "model"
    codes = {k: run_fold(iemocap, ckpt, exps / f"ER_fold{k}", k, STEPS) for k in FOLDS}
    return exps, codes


@pytest.mark.slow
def test_er_five_folds_train_evaluate_and_average(iemocap, folds):
    exps, codes = folds
    accs = {}
    for k in FOLDS:
        expdir = exps / f"ER_fold{k}"
        assert codes[k] == (0, 0), (expdir / "stdout.log").read_text()[-3000:]
        (last,) = log_lines(expdir / "log.log", "test at step 0: ")
        acc = float(last.split(": ")[1])
        truth = dict(line.split() for line in (expdir / f"test_fold{k}_truth.txt").read_text().splitlines())
        predict = dict(line.split() for line in (expdir / f"test_fold{k}_predict.txt").read_text().splitlines())
        expected = {e["path"].split("/")[-1].removesuffix(".wav"): e["label"] for e in expected_meta(iemocap, k)["test"]}
        assert truth == expected  # fold k tested exactly session k, with our labels
        assert acc == pytest.approx(sum(predict[n] == v for n, v in truth.items()) / len(truth))
        result = read_expdir(expdir)
        assert (result.task, result.fold) == ("ER", f"fold{k}")
        assert result.metrics["ER"] == pytest.approx(100 * acc)
        accs[k] = acc
    (model,) = read_results(exps)
    assert model.metrics["ER"] == pytest.approx(100 * sum(accs.values()) / 5)
    assert "mean of folds fold1, fold2, fold3, fold4, fold5" in model.sources["ER"]


@pytest.mark.slow
@pytest.mark.learning  # a measurement of minutes: `make test-learning`
def test_er_learns_above_chance(tmp_path):
    data = make_iemocap(tmp_path / "IEMOCAP_full_release", per_emotion=4, seed=1)
    run_s3prl_preprocess(data.root)
    ckpt, expdir = make_tiny_wavlm(tmp_path / "tiny.pt"), tmp_path / "ER_fold1"
    assert run_fold(data, ckpt, expdir, 1, steps=300, lr=1e-3) == (0, 0)
    (last,) = log_lines(expdir / "log.log", "test at step 0: ")
    acc = float(last.split(": ")[1])
    print(f"ER learnability (fold1): test acc {acc:.3f}, chance 0.25")
    assert acc > 0.4
