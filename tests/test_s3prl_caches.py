"""s3prl's dataset caches live in the experiment directory, never in s3prl's package (caches.py; issue 19).

Fast tests: the survey of the ten downstreams, the two module globals s3prl's
dataset code reads, s3prl's own dataset classes writing and reading at our
location while s3prl's package is unchanged, reuse and rebuild. The slow tests
run SID and ASV through ``pruned-upstream superb`` on small VoxCeleb1s and
compare a snapshot (paths, sizes, modification times) of s3prl's package
before and after: nothing created, nothing changed; a second data set sees its
own lists.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import joblib
import pytest
import torch
from superb_cli_helpers import datarc, join, runner_overrides, superb, train_argv

from pruned_upstream.s3prl_plugin import caches, preflight
from pruned_upstream.s3prl_plugin.caches import CACHES, caches_of, read_stamp, redirect_caches, tree_signature
from pruned_upstream.s3prl_plugin.tasks import TASKS

SUPERB_DOWNSTREAMS = sorted({spec.downstream for spec in TASKS.values()})


def s3prl_root() -> Path:
    return preflight.installed_s3prl_root()


def snapshot(package: Path) -> dict[str, tuple[int, int]]:
    """Every path under s3prl's package (``__pycache__`` aside: Python's own) with its size and mtime."""
    out = {}
    for top, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + files:
            st = os.lstat(os.path.join(top, name))
            out[os.path.relpath(os.path.join(top, name), package)] = (st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------ the survey
def test_exactly_two_of_the_ten_downstreams_write_beside_their_source():
    """A file that both derives a path from ``__file__`` and saves (pickle/torch/json/numpy) is a cache writer."""
    root = s3prl_root()
    save = re.compile(r"pickle\.dump|torch\.save|json\.dump|np\.save|\.to_csv|open\([^)]*['\"]w")
    writers = set()
    for downstream in SUPERB_DOWNSTREAMS:
        for path in sorted((root / "downstream" / downstream).rglob("*.py")):
            text = path.read_text(errors="replace")
            if "__file__" in text and save.search(text):
                writers.add(path.relative_to(root).as_posix())
    assert len(SUPERB_DOWNSTREAMS) == 9  # ten tasks, ctc serves PR and SF
    assert writers == {"downstream/voxceleb1/dataset.py", "downstream/sv_voxceleb1/dataset.py"}
    assert {spec.writer.split()[0].removeprefix("s3prl/") for spec in CACHES} == writers


def test_s3prl_takes_the_cache_location_from_the_globals_we_set():
    """voxceleb1 reads CACHE_PATH, sv_voxceleb1 dirname(__file__), both at run time: setting them moves the caches."""
    sid = (s3prl_root() / "downstream/voxceleb1/dataset.py").read_text()
    asv = (s3prl_root() / "downstream/sv_voxceleb1/dataset.py").read_text()
    assert "CACHE_PATH = os.path.join(os.path.dirname(__file__), '.cache/')" in sid
    assert sid.count("CACHE_PATH") == 2 and "os.path.join(CACHE_PATH, f'{mode}.pkl')" in sid
    assert "cache_path = Path(os.path.dirname(__file__)) / '.wav_lengths' / f'{self.root_key[index]}_length.pt'" in asv
    assert [spec.attribute for spec in CACHES] == ["CACHE_PATH", "__file__"]


def test_tasks_and_downstream_names_find_the_same_caches():
    assert caches_of("SID") == caches_of("voxceleb1") and len(caches_of("sid")) == 1
    assert caches_of("ASV") == caches_of("sv_voxceleb1")
    assert all(caches_of(key) == () for key in ("PR", "KS", "IC", "ER", "ASR", "QbE", "SF", "SD"))


# ------------------------------------------------------- s3prl's datasets, fake data
def fake_data(tmp_path: Path, name: str) -> tuple[Path, Path]:
    root = tmp_path / name
    (root / "dev" / "wav" / "id10001" / "abcdefghijk").mkdir(parents=True)
    (root / "dev" / "wav" / "id10001" / "abcdefghijk" / "00001.wav").write_bytes(name.encode())
    meta = root / "iden_split.txt"
    meta.write_text("1 id10001/abcdefghijk/00001.wav\n")
    return root, meta


def sid_config(root: Path, meta: Path) -> dict:
    return {"downstream_expert": {"datarc": {"file_path": str(root), "meta_data": str(meta)}}}


def sid_train_list(exp: Path, root: Path, meta: Path) -> tuple[list[str], str]:
    """s3prl's SpeakerClassifiDataset('train') with the caches redirected to ``exp``: (its list, our action)."""
    from s3prl.downstream.voxceleb1 import dataset

    with redirect_caches("SID", exp, sid_config(root, meta), s3prl_root()) as (action,):
        assert dataset.CACHE_PATH == str(exp / "s3prl_cache" / "voxceleb1") + os.sep
        files = dataset.SpeakerClassifiDataset("train", root, str(meta)).dataset
    return files, action.action


def test_sid_lists_are_written_per_experiment_and_s3prl_is_unchanged(tmp_path):
    from s3prl.downstream.voxceleb1 import dataset

    original, before = dataset.CACHE_PATH, snapshot(s3prl_root())
    (a, a_meta), (b, b_meta) = fake_data(tmp_path, "A"), fake_data(tmp_path, "B")
    wav = "dev/wav/id10001/abcdefghijk/00001.wav"
    assert sid_train_list(tmp_path / "expA", a, a_meta) == ([str(a / wav)], "fresh")
    assert pickle.loads((tmp_path / "expA/s3prl_cache/voxceleb1/train.pkl").read_bytes()) == [str(a / wav)]
    assert sid_train_list(tmp_path / "expB", b, b_meta) == ([str(b / wav)], "fresh")  # its own, not A's
    assert sid_train_list(tmp_path / "expA", a, a_meta) == ([str(a / wav)], "reused")
    assert sid_train_list(tmp_path / "expA", b, b_meta) == ([str(b / wav)], "rebuilt")  # other data, same dir
    assert read_stamp(tmp_path / "expA", "SID")["data"]["file_path"] == str(b)
    assert dataset.CACHE_PATH == original
    assert snapshot(s3prl_root()) == before


def test_asv_lengths_are_read_from_the_experiment_and_s3prl_is_unchanged(tmp_path):
    """A lengths file in the experiment's cache is the one s3prl's SpeakerVerifi_train loads (no sox pass)."""
    from s3prl.downstream.sv_voxceleb1 import dataset

    original, before = dataset.__file__, snapshot(s3prl_root())
    root, _ = fake_data(tmp_path, "A")
    config = {"downstream_expert": {"datarc": {"file_path": str(root)}}}
    with redirect_caches("ASV", tmp_path / "exp", config, s3prl_root()) as (action,):
        lengths = tmp_path / "exp/s3prl_cache/sv_voxceleb1/.wav_lengths/Voxceleb1_length.pt"
        assert action.action == "fresh" and Path(dataset.__file__).parent == lengths.parent.parent
        lengths.parent.mkdir()
        torch.save([[("id10001", "abcdefghijk", "00001.wav")], [48000]], str(lengths))
        with joblib.parallel_config(backend="sequential"):
            built = dataset.SpeakerVerifi_train({"min_sec": 16000}, ["Voxceleb1"], [root / "dev" / "wav"], None)
    assert [str(p) for p in built.dataset] == [str(root / "dev/wav/id10001/abcdefghijk/00001.wav")]
    assert dataset.__file__ == original and snapshot(s3prl_root()) == before
    with redirect_caches("ASV", tmp_path / "exp", config, s3prl_root()) as (action,):
        assert action.action == "reused" and lengths.is_file()


def test_other_downstreams_are_left_alone(tmp_path):
    with redirect_caches("KS", tmp_path / "exp", {}, tmp_path / "s3prl") as actions:
        assert actions == []
    assert not (tmp_path / "exp").exists() and not (tmp_path / "s3prl").exists()


def test_asv_data_description_follows_the_audio_tree(tmp_path):
    root, _ = fake_data(tmp_path, "A")
    config = {"downstream_expert": {"datarc": {"file_path": str(root)}}}
    first = caches.describe_asv(config, tmp_path)
    wav = root / "dev/wav/id10001/abcdefghijk/00001.wav"
    assert caches.describe_asv(config, tmp_path) == first
    wav.write_bytes(b"other audio, other length")
    assert caches.describe_asv(config, tmp_path)["tree"] != first["tree"]
    (wav.parent / "00002.wav").write_bytes(b"x")
    assert tree_signature(root / "dev/wav")["files"] == 2


# ---------------------------------------------- the installed s3prl, real runs
@pytest.fixture(scope="module")
def two_voxcelebs(tmp_path_factory):
    from pruned_upstream.superb_data.voxceleb1 import make_voxceleb1

    out = tmp_path_factory.mktemp("caches")
    a = make_voxceleb1(out / "A", n_dev=2, n_test=2, train_videos=1, per_video=1, seed=0)
    b = make_voxceleb1(out / "B", n_dev=3, n_test=2, train_videos=1, per_video=1, seed=1)
    return out, a, b


def sid_test_pass(out: Path, data, name: str) -> dict:
    """One SID training step that tests the test split: s3prl's test_truth.txt."""
    from s3prl_fixtures import make_tiny_wavlm

    ckpt, expdir = make_tiny_wavlm(out / "tiny.pt"), out / name
    override = join(runner_overrides(1) + ["config.runner.eval_dataloaders=['test']"] + datarc(
        file_path=data.root, meta_data=data.iden_split, num_workers=0, train_batch_size=2))
    assert superb(train_argv("voxceleb1", ckpt, expdir, override)) == 0, (expdir / "stdout.log").read_text()[-3000:]
    return dict(line.split() for line in (expdir / "test_truth.txt").read_text().splitlines())


def sid_test_names(data) -> dict:
    return {"-".join(u.rel.removesuffix(".wav").split("/")): u.speaker for u in data.split(3)}


@pytest.mark.slow
def test_sid_and_asv_runs_leave_s3prl_s_package_unchanged(two_voxcelebs):
    """SID on A, SID on B (its own test files, not A's), ASV on A: no path under s3prl created or modified."""
    from s3prl_fixtures import make_tiny_wavlm

    out, a, b = two_voxcelebs
    before = snapshot(s3prl_root())
    assert sid_test_pass(out, a, "sid_a") == sid_test_names(a)
    assert sid_test_pass(out, b, "sid_b") == sid_test_names(b)
    assert {p.name for p in (out / "sid_b/s3prl_cache/voxceleb1").iterdir()} == {"train.pkl", "dev.pkl", "test.pkl",
                                                                               "data.json"}
    override = join(runner_overrides(1) + datarc(file_path=a.root, test_meta_data=a.trials, num_workers=0,
                                                 train_batch_size=2))
    with joblib.parallel_config(backend="sequential"):  # s3prl's Parallel(n_jobs=12) on 2 cores
        rc = superb(train_argv("sv_voxceleb1", make_tiny_wavlm(out / "tiny.pt"), out / "asv_a", override))
    assert rc == 0, (out / "asv_a" / "stdout.log").read_text()[-3000:]
    tags, _ = torch.load(str(out / "asv_a/s3prl_cache/sv_voxceleb1/.wav_lengths/Voxceleb1_length.pt"))
    assert len(tags) == len([u for u in a.utterances if u.set == "dev"])
    assert snapshot(s3prl_root()) == before
