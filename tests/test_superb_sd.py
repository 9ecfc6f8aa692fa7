"""SD (speaker diarization): our Libri2Mix-style corpus, s3prl's runner, score.sh's grid with dscore.

dscore comes from ``$DSCORE_ROOT`` (a directory or a .tar.gz), else from the
copy ``make install`` unpacks into the virtualenv's ``src/``; without either
the scoring tests are skipped.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pruned_upstream.cli import main
from pruned_upstream.s3prl_plugin import sd_eval, third_party
from pruned_upstream.superb.results import read_expdir
from pruned_upstream.superb_data.libri2mix import KALDI_FILES, SPEAKERS, SPLIT_DIRS, make_libri2mix_sd, read_rttm

FRAME_SHIFT = 320  # the tiny WavLM's (and WavLM's) samples per frame


@pytest.fixture
def dscore_env(monkeypatch, tmp_path):
    value = third_party.configured_dscore()
    if value is None:  # `make install` unpacks DSCORE_ROOT into the venv; CI sets it: never skip
        pytest.fail("dscore not found: set DSCORE_ROOT (a clone of ftshijt/dscore or a .tar.gz of it) "
                    "and run `make install`")
    monkeypatch.setenv(third_party.DSCORE_ENV, value)
    monkeypatch.setenv(third_party.CACHE_ENV, str(tmp_path / "cache"))
    if third_party.missing_dscore_packages():
        pytest.fail(f"dscore needs {third_party.missing_dscore_packages()}: pip install -e '.[superb]'")
    return value


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_libri2mix_sd(tmp_path_factory.mktemp("libri2mix"), seed=0)


# ---------------------------------------------------------------- dscore resolver

def fake_dscore(root: Path) -> Path:
    (root / "scorelib").mkdir(parents=True)
    (root / "score.py").write_text("print('fake dscore')\n")
    return root


def test_dscore_root_directory_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(third_party.DSCORE_ENV, raising=False)
    with pytest.raises(third_party.ToolNotFoundError, match="DSCORE_ROOT is not set"):
        third_party.dscore_root()
    with pytest.raises(third_party.ToolNotFoundError, match="does not exist"):
        third_party.dscore_root(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(third_party.ToolNotFoundError, match="no score.py"):
        third_party.dscore_root(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(third_party.ToolNotFoundError, match="not a"):
        third_party.dscore_root(str(tmp_path / "notes.txt"))
    tree = fake_dscore(tmp_path / "wrapper" / "dscore")
    monkeypatch.setenv(third_party.DSCORE_ENV, str(tree))
    assert third_party.dscore_root() == tree.resolve()
    assert third_party.dscore_root(str(tmp_path / "wrapper")) == tree.resolve()  # its single top directory


def test_dscore_root_unpacks_a_tarball_once(tmp_path, monkeypatch):
    tree = fake_dscore(tmp_path / "dscore-19dab77")
    archive = tmp_path / "dscore-19dab77.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)
    calls = []
    real_extract = third_party._extract
    monkeypatch.setattr(third_party, "_extract", lambda a, t: (calls.append(a), real_extract(a, t)))
    first = third_party.dscore_root(str(archive), cache_dir=tmp_path / "cache")
    second = third_party.dscore_root(str(archive), cache_dir=tmp_path / "cache")
    assert first == second and (first / "score.py").read_text() == "print('fake dscore')\n"
    assert first.is_relative_to(tmp_path / "cache") and len(calls) == 1
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "dscore-19dab77" / "scorelib", arcname="scorelib")
    with pytest.raises(third_party.ToolNotFoundError, match="no score.py"):
        third_party.dscore_root(str(bad), cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- the corpus

def read_table(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_corpus_layout(corpus):
    speakers = {}
    for split in ("train", "dev", "test"):
        d = corpus / split
        assert all((d / name).is_file() for name in KALDI_FILES)
        wavs = dict(read_table(d / "wav.scp"))
        durs = {k: float(v) for k, v in read_table(d / "reco2dur")}
        assert wavs.keys() == durs.keys() and len(wavs) == {"train": 8, "dev": 2, "test": 2}[split]
        for mix_id, path in wavs.items():
            info = sf.info(path)
            assert info.samplerate == 16000 and info.subtype == "PCM_16" and Path(path).is_absolute()
            assert durs[mix_id] == pytest.approx(info.frames / 16000)
            assert f"/wav16k/max/{SPLIT_DIRS[split]}/mix_both/" in path
        segs = read_table(d / "segments")
        utt2spk = dict(read_table(d / "utt2spk"))
        rttm = read_rttm(d / "rttm")
        assert len(segs) == len(rttm) == len(utt2spk)
        for (seg_id, mix_id, start, end), (rec, r_start, r_dur, spk) in zip(segs, rttm):
            assert seg_id == f"{mix_id}_{round(float(start) * 1000):06d}_{round(float(end) * 1000):06d}"
            assert (rec, utt2spk[seg_id]) == (mix_id, spk)
            assert float(start) == r_start and float(end) == pytest.approx(r_start + r_dur, abs=1e-9)
            assert 0 <= float(start) < float(end) <= durs[mix_id]
            assert mix_id.split("_")[0].split("-")[0] == spk or mix_id.split("_")[1].split("-")[0] == spk
        spk2utt = {line[0]: line[1:] for line in read_table(d / "spk2utt")}
        assert sorted(spk2utt) == sorted(set(utt2spk.values()))
        speakers[split] = set(utt2spk.values())
        assert len(speakers[split]) <= len(SPEAKERS[split])
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["dev"] & speakers["test"])


def speaker_turns(rttm: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """recording -> speaker -> [(start, end)]."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for rec, start, dur, spk in read_rttm(rttm):
        out.setdefault(rec, {}).setdefault(spk, []).append((start, start + dur))
    return out


def test_corpus_has_overlap_and_single_speaker_speech(corpus):
    overlaps = []
    for split in ("train", "dev", "test"):
        for rec, turns in speaker_turns(corpus / split / "rttm").items():
            assert len(turns) == 2
            grid = np.arange(0, max(e for spans in turns.values() for _, e in spans), 0.01)
            a, b = ([(grid >= s) & (grid < e) for s, e in spans] for spans in turns.values())
            a, b = np.any(a, axis=0), np.any(b, axis=0)
            assert (a & ~b).sum() >= 39 and (b & ~a).sum() >= 39  # each speaker >= 0.4 s alone (MIN_SOLO)
            overlaps.append((a & b).sum() / 100)
    assert sum(o > 0.1 for o in overlaps) >= len(overlaps) // 2  # overlapped speech in most recordings


def test_s3prl_reads_the_labels(corpus):
    """s3prl's own DiarizationDataset turns our segments into the frame labels we expect."""
    import s3prl.downstream.diarization.dataset as dataset_mod
    data = dataset_mod.DiarizationDataset("test", str(corpus / "test"), chunk_size=2000, frame_shift=FRAME_SHIFT,
                                          subsampling=1, rate=16000, num_speakers=2)
    wavs, labels, rec = data[0]
    turns = [(s, s + d, spk) for r, s, d, spk in read_rttm(corpus / "test" / "rttm") if r == rec]
    speakers = sorted({spk for _, _, spk in turns})
    label = np.concatenate(labels)
    expected = np.zeros_like(label)
    for s, e, spk in turns:
        expected[int(np.rint(s * 16000 / FRAME_SHIFT)): int(np.rint(e * 16000 / FRAME_SHIFT)), speakers.index(spk)] = 1
    assert label.shape[1] == 2 and (label == expected).all()
    assert sum(len(w) for w in wavs) == pytest.approx(len(label) * FRAME_SHIFT, abs=FRAME_SHIFT)


# ---------------------------------------------------------------- the scoring grid

def write_oracle_predictions(test_dir: Path, expdir: Path) -> None:
    """EXPDIR/scoring/predictions/<rec>.h5 holding the reference activity, as s3prl's expert writes T_hat."""
    import h5py

    (expdir / "scoring" / "predictions").mkdir(parents=True)
    (expdir / "frame_shift").write_text(f"{FRAME_SHIFT}\n")
    durs = {k: float(v) for k, v in read_table(test_dir / "reco2dur")}
    for rec, dur in durs.items():
        turns = [(s, s + d, spk) for r, s, d, spk in read_rttm(test_dir / "rttm") if r == rec]
        speakers = sorted({spk for _, _, spk in turns})
        t_hat = np.full((int(dur * 16000 / FRAME_SHIFT), 2), 0.05, dtype=np.float32)
        for s, e, spk in turns:
            t_hat[int(np.rint(s * 50)): int(np.rint(e * 50)), speakers.index(spk)] = 0.95
        with h5py.File(expdir / "scoring" / "predictions" / f"{rec}.h5", "w") as f:
            f.create_dataset("T_hat", data=t_hat)


def test_grid_on_oracle_predictions_gives_near_zero_der(corpus, tmp_path, dscore_env):
    expdir = tmp_path / "oracle"
    write_oracle_predictions(corpus / "test", expdir)
    result = sd_eval.score_sd(expdir, corpus / "test")
    assert len(result.grid) == 10 and set(result.grid) == {(t, m) for t in sd_eval.THRESHOLDS for m in sd_eval.MEDIANS}
    for th, med in result.grid:
        assert (expdir / "scoring" / f"hyp_{th}_{med}.rttm").is_file()
        assert "*** OVERALL ***" in (expdir / "scoring" / f"result_th{th}_med{med}").read_text()
    assert result.der < 2.0  # only the 20 ms frame rounding of the boundaries is lost
    assert max(result.grid.values()) < 2.0  # 0.05 / 0.95 activities: every threshold agrees
    # results' reader (the `score` command) reads the same lowest DER once args mark an SD expdir
    (expdir / "args_2024-01-01-00-00-00.yaml").write_text("downstream: diarization\nevaluate_split: test\n")
    run = read_expdir(expdir)
    assert run.task == "SD" and run.metrics["SD"] == pytest.approx(result.der)


def test_grid_detects_a_wrong_hypothesis(corpus, tmp_path, dscore_env):
    """Everything assigned to one speaker: DER far from zero (the scorer is not vacuous)."""
    import h5py

    expdir = tmp_path / "one_speaker"
    write_oracle_predictions(corpus / "test", expdir)
    for path in (expdir / "scoring" / "predictions").glob("*.h5"):
        with h5py.File(path, "r+") as f:
            t_hat = f["T_hat"][:]
            t_hat[:, 0] = np.maximum(t_hat[:, 0], t_hat[:, 1])
            t_hat[:, 1] = 0.0
            f["T_hat"][...] = t_hat
    assert sd_eval.score_sd(expdir, corpus / "test").der > 15.0


def test_score_sd_errors(tmp_path, corpus, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match="predictions"):
        sd_eval.score_sd(tmp_path, corpus / "test")
    with pytest.raises(FileNotFoundError, match="rttm"):
        sd_eval.score_sd(tmp_path, tmp_path)
    write_oracle_predictions(corpus / "test", tmp_path / "exp")
    monkeypatch.delenv(third_party.DSCORE_ENV, raising=False)
    assert main(["superb-step", "sd-score", str(tmp_path / "exp"), str(corpus / "test")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "DSCORE_ROOT is not set" in err


# ---------------------------------------------------------------- s3prl's runner, end to end

@pytest.mark.slow
def test_train_evaluate_score_read(corpus, tmp_path, dscore_env):
    from s3prl_fixtures import make_tiny_wavlm

    from pruned_upstream import cli

    ckpt = make_tiny_wavlm(tmp_path / "tiny.pt")
    exp = tmp_path / "exp" / "SD"
    override = ",,".join([
        "config.runner.total_steps=4", "config.runner.eval_step=4", "config.runner.save_step=4",
        "config.runner.log_step=2", "config.runner.gradient_accumulate_steps=1",
        "config.downstream_expert.loaderrc.num_workers=0", "config.downstream_expert.modelrc.hidden_size=32",
        *(f"config.downstream_expert.loaderrc.{split}_dir={corpus / split}" for split in ("train", "dev", "test")),
    ])
    assert cli.main(["superb", "-m", "train", "-u", "pruned_wavlm_local", "-k", str(ckpt), "-d", "diarization",
                     "-p", str(exp), "-o", override]) == 0
    assert (exp / "best-states-dev.ckpt").is_file() and (exp / "frame_shift").read_text().strip() == str(FRAME_SHIFT)
    assert cli.main(["superb", "-m", "evaluate", "-e", str(exp / "best-states-dev.ckpt"), "-t", "test"]) == 0
    stdout = (exp / "stdout.log").read_text()
    assert "mode dev acc" in stdout and "mode test acc" in stdout
    predictions = sorted((exp / "scoring" / "predictions").glob("*.h5"))
    recordings = {line.split()[0]: float(line.split()[1]) for line in (corpus / "test" / "reco2dur").read_text().splitlines()}
    assert {p.stem for p in predictions} == set(recordings)
    import h5py

    for path in predictions:
        with h5py.File(path, "r") as f:
            t_hat = f["T_hat"][:]
        assert t_hat.shape[1] == 2 and abs(len(t_hat) - recordings[path.stem] * 50) <= 2
        assert ((t_hat >= 0) & (t_hat <= 1)).all()
    result = sd_eval.score_sd(exp, corpus / "test")
    run = read_expdir(exp)
    assert run.task == "SD" and run.split == "test"
    assert run.metrics["SD"] == pytest.approx(result.der) == pytest.approx(min(result.grid.values()))
    lowest = {f"{exp}/scoring/result_th{th}_med{med}" for (th, med), der in result.grid.items() if der == result.der}
    assert 0.0 <= result.der <= 200.0 and run.sources["SD"].rsplit(":", 1)[0] in lowest


def test_corpus_is_deterministic(tmp_path, corpus):
    import hashlib

    def digest(data_dir: Path) -> dict[str, str]:
        files = {name: (data_dir / "test" / name).read_text().replace(str(data_dir.parent), "ROOT")
                 for name in KALDI_FILES}
        wavs = sorted((data_dir.parent / "Libri2Mix").rglob("test/mix_both/*.wav"))
        return files | {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in wavs}

    again = make_libri2mix_sd(tmp_path / "again", sizes={"train": 8, "dev": 2, "test": 2}, seed=0)
    assert digest(again) == digest(corpus)
    other = make_libri2mix_sd(tmp_path / "other", sizes={"train": 1, "dev": 1, "test": 2}, seed=1)
    assert digest(other) != digest(corpus)
