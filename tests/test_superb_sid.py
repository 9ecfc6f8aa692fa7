"""SUPERB SID (speaker identification, s3prl ``-d voxceleb1``) end to end on a small VoxCeleb1.

The data (pruned_upstream/superb_data/voxceleb1.py) is espeak-ng speech in
VoxCeleb1's layout with VGG's ``iden_split.txt`` format; the runs are s3prl's
own runner through ``pruned-upstream superb``: train a few steps, evaluate the
saved checkpoint with ``-m evaluate -e``, read the accuracy with
``read_expdir``. ``make test-learning`` (pytest -m learning) adds a longer run that
checks the accuracy beats chance (its numbers: docs/tasks/sid.md).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
from s3prl_fixtures import make_tiny_wavlm
from superb_cli_helpers import cache_stamp, datarc, join, log_lines, runner_overrides, superb, train_argv

from pruned_upstream.superb.results import read_expdir
from pruned_upstream.superb_data.voxceleb1 import IDEN_SPLIT, make_voxceleb1, sid_label

STEPS = 4
REL = re.compile(r"^id1\d{4}/[A-Za-z0-9_-]{11}/\d{5}\.wav$")


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_small_voxceleb1_has_the_real_layout_and_split_list(tmp_path):
    data = make_voxceleb1(tmp_path / "vox", n_dev=2, n_test=2, train_videos=1, per_video=2, seed=3)
    wavs = sorted(p.relative_to(data.root) for p in data.root.rglob("*.wav"))
    assert len(wavs) == len(data.utterances) == 4 * 3 * 2
    for rel in wavs:
        assert rel.parts[:2] in (("dev", "wav"), ("test", "wav")) and REL.match("/".join(rel.parts[2:])), rel
        info = sf.info(str(data.root / rel))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.duration >= 2.4  # above ASV's 2 s filter
    assert {p.parts[2] for p in wavs if p.parts[0] == "test"} == {"id10270", "id10271"}  # the real test ids
    lines = [line.split() for line in (data.root / IDEN_SPLIT).read_text().splitlines()]
    assert {split for split, _ in lines} == {"1", "2", "3"}
    for split, rel in lines:  # s3prl globs <root>/*/wav/<rel>: exactly one match each
        assert len(list(data.root.glob(f"*/wav/{rel}"))) == 1, rel
    per_speaker = Counter((rel.split("/")[0], split) for split, rel in lines)
    assert all(per_speaker[(s.id, k)] >= 2 for s in data.speakers for k in "123")
    assert sid_label("id10001") == 0 and sid_label("id10270") == 269


def test_small_voxceleb1_is_deterministic_given_the_seed(tmp_path):
    a = make_voxceleb1(tmp_path / "a", n_dev=1, n_test=2, train_videos=1, per_video=1, seed=5)
    b = make_voxceleb1(tmp_path / "b", n_dev=1, n_test=2, train_videos=1, per_video=1, seed=5)
    c = make_voxceleb1(tmp_path / "c", n_dev=1, n_test=2, train_videos=1, per_video=1, seed=6)
    assert tree_hashes(a.root) == tree_hashes(b.root)
    assert tree_hashes(a.root) != tree_hashes(c.root)


def sid_override(data, steps: int, lr: float | None = None) -> str:
    items = runner_overrides(steps, eval_dev_only=True) + datarc(
        file_path=data.root, meta_data=data.iden_split, num_workers=0, train_batch_size=4
    )
    return join(items + ([f"config.optimizer.lr={lr}"] if lr else []))


def run_sid(out: Path, data, steps: int, lr: float | None = None) -> dict:
    """Train, then ``-m evaluate -e`` the dev-best checkpoint (else the last one); returns what ran."""
    ckpt, expdir, times = make_tiny_wavlm(out / "tiny.pt"), out / "exp", {}
    override = sid_override(data, steps, lr)
    train_rc = superb(train_argv("voxceleb1", ckpt, expdir, override), times, "train")
    best = expdir / "dev-best.ckpt"
    best = best if best.is_file() else expdir / f"states-{steps}.ckpt"
    eval_rc = superb(["-m", "evaluate", "-e", best, "-t", "test"], times, "evaluate")
    return {"expdir": expdir, "train_rc": train_rc, "eval_rc": eval_rc, "times": times,
            "cache": cache_stamp("SID", expdir)}


@pytest.fixture(scope="module")
def sid(tmp_path_factory):
    out = tmp_path_factory.mktemp("sid")
    data = make_voxceleb1(out / "VoxCeleb1", n_dev=4, n_test=2, train_videos=2, per_video=2)
    return data, run_sid(out, data, STEPS)


@pytest.mark.slow
def test_sid_trains_evaluates_and_scores(sid):
    data, run = sid
    expdir = run["expdir"]
    assert (run["train_rc"], run["eval_rc"]) == (0, 0), (expdir / "stdout.log").read_text()[-3000:]
    (last,) = log_lines(expdir / "log.log", "test at step 0: ")  # the -m evaluate pass
    acc = float(last.split(": ")[1])
    assert 0.0 <= acc <= 1.0
    result = read_expdir(expdir)
    assert result.task == "SID" and result.metrics["SID"] == pytest.approx(100 * acc)
    assert "log.log" in result.sources["SID"]
    truth = dict(line.split() for line in (expdir / "test_truth.txt").read_text().splitlines())
    predict = dict(line.split() for line in (expdir / "test_predict.txt").read_text().splitlines())
    expected = {"-".join(u.rel.removesuffix(".wav").split("/")): u.speaker for u in data.split(3)}
    assert truth == expected  # s3prl tested exactly our SID test split, with our speaker labels
    assert acc == pytest.approx(sum(predict[k] == v for k, v in truth.items()) / len(truth))
    # s3prl built its lists in the experiment (not in its package), then the evaluate run reused them
    assert run["cache"]["action"] == "reused" and run["cache"]["data"]["file_path"] == str(data.root)
    assert (expdir / "s3prl_cache" / "voxceleb1" / "test.pkl").is_file()


@pytest.mark.slow
@pytest.mark.learning  # a measurement of minutes: `make test-learning`
def test_sid_learns_above_chance(tmp_path):
    data = make_voxceleb1(tmp_path / "VoxCeleb1", n_dev=4, n_test=2, train_videos=4, per_video=3)
    run = run_sid(tmp_path, data, steps=300, lr=1e-2)
    (last,) = log_lines(run["expdir"] / "log.log", "test at step 0: ")
    acc, chance = float(last.split(": ")[1]), 1 / len(data.speakers)
    print(f"SID learnability: test acc {acc:.3f}, chance {chance:.3f}, times {run['times']}")
    assert acc > 2 * chance
