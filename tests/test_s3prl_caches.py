"""s3prl's package-directory caches (pruned_upstream/s3prl_plugin/caches.py; docs/tasks/caches.md).

Fast tests drive ``isolate_caches`` against a fake s3prl package directory;
the slow ones use the installed s3prl with two different small VoxCeleb1s in a
row: without isolation s3prl's datasets (built directly, so that no runner
hook intervenes) reuse the first one's file lists (the hazard is real); with
it each run through ``pruned-upstream superb`` sees its own.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import joblib
import pytest
import torch
from superb_cli_helpers import datarc, isolate, join, runner_overrides, superb, train_argv

from pruned_upstream.s3prl_plugin import caches, preflight
from pruned_upstream.s3prl_plugin.caches import CACHES, caches_of, isolate_caches, tree_signature
from pruned_upstream.s3prl_plugin.tasks import TASKS
from pruned_upstream.superb_data.voxceleb1 import make_voxceleb1

SUPERB_DOWNSTREAMS = sorted({spec.downstream for spec in TASKS.values()})


# ------------------------------------------------------------ the survey
def test_exactly_two_of_the_ten_downstreams_write_into_their_package_directory():
    """A file that both derives a path from ``__file__`` and saves (pickle/torch/json/numpy) is a cache writer."""
    root = preflight.installed_s3prl_root()
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


def test_tasks_and_downstream_names_find_the_same_caches():
    assert caches_of("SID") == caches_of("voxceleb1") and len(caches_of("sid")) == 1
    assert caches_of("ASV") == caches_of("sv_voxceleb1")
    assert all(caches_of(key) == () for key in ("PR", "KS", "IC", "ER", "ASR", "QbE", "SF", "SD"))


# ------------------------------------------------------- a fake s3prl root
def sid_config(root: Path, meta: Path) -> dict:
    return {"downstream_expert": {"datarc": {"file_path": str(root), "meta_data": str(meta)}}}


def fake_data(tmp_path: Path, name: str) -> tuple[Path, Path]:
    root = tmp_path / name
    (root / "dev" / "wav" / "id10001" / "abcdefghijk").mkdir(parents=True)
    (root / "dev" / "wav" / "id10001" / "abcdefghijk" / "00001.wav").write_bytes(name.encode())
    meta = root / "iden_split.txt"
    meta.write_text("1 id10001/abcdefghijk/00001.wav\n")
    return root, meta


def write_sid_cache(s3prl: Path, data_root: Path) -> None:
    """What s3prl's SpeakerClassifiDataset leaves: one pickle of absolute paths per split."""
    cache = s3prl / "downstream/voxceleb1/.cache"
    cache.mkdir(parents=True, exist_ok=True)
    for mode in ("train", "dev", "test"):
        (cache / f"{mode}.pkl").write_bytes(pickle.dumps([str(data_root / "dev/wav/id10001/abcdefghijk/00001.wav")]))


def cached_roots(s3prl: Path) -> set[str]:
    cache = s3prl / "downstream/voxceleb1/.cache"
    return {pickle.loads((cache / f"{m}.pkl").read_bytes())[0].split("/dev/")[0] for m in ("train", "dev", "test")
            if (cache / f"{m}.pkl").is_file()}


def test_sid_caches_are_stashed_restored_and_quarantined(tmp_path):
    s3prl, exp = tmp_path / "s3prl", tmp_path / "exp"
    (a, meta_a), (b, meta_b) = fake_data(tmp_path, "A"), fake_data(tmp_path, "B")
    write_sid_cache(s3prl, a)  # left by a run before we managed the directory

    def run(root, meta):
        (action,) = isolate_caches("SID", s3prl, exp, sid_config(root, meta))
        return action.action

    assert run(a, meta_a) == "quarantined+fresh" and cached_roots(s3prl) == set()
    write_sid_cache(s3prl, a)  # s3prl rebuilds A's lists
    assert run(a, meta_a) == "reused" and cached_roots(s3prl) == {str(a)}
    assert run(b, meta_b) == "stashed+fresh" and cached_roots(s3prl) == set()
    write_sid_cache(s3prl, b)
    assert run(a, meta_a) == "stashed+restored" and cached_roots(s3prl) == {str(a)}
    assert run(b, meta_b) == "stashed+restored" and cached_roots(s3prl) == {str(b)}
    write_sid_cache(s3prl, a)  # a run that bypassed us wrote A's lists while B is stamped
    assert run(b, meta_b) == "quarantined+fresh" and cached_roots(s3prl) == set()
    meta_b.write_text("1 id10001/abcdefghijk/00001.wav\n2 id10001/abcdefghijk/00001.wav\n")
    assert run(b, meta_b) == "fresh"  # same paths, another split list: another fingerprint
    ours = s3prl / "downstream/voxceleb1/.cache/pruned_upstream"
    assert len(list((ours / "unstamped").iterdir())) >= 1 and (ours / "live.json").is_file()
    log = json.loads((exp / "s3prl_caches.json").read_text())
    assert len(log["runs"]) == 7 and log["runs"][0]["actions"][0]["directory"] == "downstream/voxceleb1/.cache"


def test_other_downstreams_are_left_alone(tmp_path):
    assert isolate_caches("KS", tmp_path / "s3prl", tmp_path / "exp", {}) == []
    assert isolate_caches("emotion", tmp_path / "s3prl", tmp_path / "exp", {}) == []
    assert not (tmp_path / "s3prl").exists() and not (tmp_path / "exp").exists()


def test_asv_fingerprint_follows_the_audio_tree(tmp_path):
    root, _ = fake_data(tmp_path, "A")
    config = {"downstream_expert": {"datarc": {"file_path": str(root)}}}
    first = caches.describe_asv(config, tmp_path)
    wav = root / "dev/wav/id10001/abcdefghijk/00001.wav"
    assert caches.describe_asv(config, tmp_path) == first
    wav.write_bytes(b"other audio, other length")
    assert caches.describe_asv(config, tmp_path)["tree"] != first["tree"]
    (wav.parent / "00002.wav").write_bytes(b"x")
    assert tree_signature(root / "dev/wav")["files"] == 2
    cache = tmp_path / "Voxceleb1_length.pt"
    torch.save([[("id10001", "abcdefghijk", "00001.wav")], [40000]], str(cache))
    assert caches.verify_asv(cache, caches.describe_asv(config, tmp_path))
    torch.save([[("id10009", "abcdefghijk", "00001.wav")], [40000]], str(cache))
    assert not caches.verify_asv(cache, caches.describe_asv(config, tmp_path))


# ---------------------------------------------- the installed s3prl, two data sets
@pytest.fixture(scope="module")
def two_voxcelebs(tmp_path_factory):
    out = tmp_path_factory.mktemp("caches")
    a = make_voxceleb1(out / "A", n_dev=2, n_test=2, train_videos=1, per_video=1, seed=0)
    b = make_voxceleb1(out / "B", n_dev=3, n_test=2, train_videos=1, per_video=1, seed=1)
    return out, a, b


def sid_test_pass(out: Path, data, name: str) -> tuple[dict, list]:
    """One SID training step (after isolation) that tests the test split: s3prl's test_truth.txt, our actions."""
    from s3prl_fixtures import make_tiny_wavlm

    ckpt, expdir = make_tiny_wavlm(out / "tiny.pt"), out / name
    override = join(runner_overrides(1) + ["config.runner.eval_dataloaders=['test']"] + datarc(
        file_path=data.root, meta_data=data.iden_split, num_workers=0, train_batch_size=2))
    actions = isolate("SID", override, expdir)
    assert superb(train_argv("voxceleb1", ckpt, expdir, override)) == 0
    truth = dict(line.split() for line in (expdir / "test_truth.txt").read_text().splitlines())
    return truth, actions


def sid_test_files_unprotected(data) -> list[str]:
    """s3prl's own SID test set for ``data``, built directly (no runner, so no isolation hook)."""
    from s3prl.downstream.voxceleb1.dataset import SpeakerClassifiDataset

    return sorted(SpeakerClassifiDataset("test", data.root, str(data.iden_split)).dataset)


def sid_test_names(data) -> dict:
    return {"-".join(u.rel.removesuffix(".wav").split("/")): u.speaker for u in data.split(3)}


@pytest.mark.slow
def test_sid_second_data_set_sees_its_own_file_list(two_voxcelebs):
    out, a, b = two_voxcelebs
    truth, _ = sid_test_pass(out, a, "a1")
    assert truth == sid_test_names(a)
    # s3prl alone, on B: its test set is A's files (the hazard)
    assert sid_test_files_unprotected(b) == sorted(str(a.path(u)) for u in a.split(3))
    truth, (action,) = sid_test_pass(out, b, "b")
    assert truth == sid_test_names(b) and action.action == "stashed+fresh"
    truth, (action,) = sid_test_pass(out, a, "a2")
    assert truth == sid_test_names(a) and action.action == "stashed+restored"
    assert "Loading file paths from" in (out / "a2" / "stdout.log").read_text()  # A's lists reused, not rebuilt


def asv_train_files(data, isolated: bool, expdir: Path) -> list[str]:
    """s3prl's own ASV training set (SpeakerVerifi_train, as its expert builds it) for ``data``."""
    from s3prl.downstream.sv_voxceleb1.dataset import SpeakerVerifi_train

    override = join(datarc(file_path=data.root))
    if isolated:
        isolate("ASV", override, expdir)
    with joblib.parallel_config(backend="sequential"):
        dataset = SpeakerVerifi_train({"min_sec": 32000}, ["Voxceleb1"], [data.root / "dev" / "wav"], None)
    return sorted(str(p) for p in dataset.dataset)


@pytest.mark.slow
def test_asv_second_data_set_sees_its_own_lengths(two_voxcelebs):
    out, a, b = two_voxcelebs
    expected = {d.root: sorted(str(d.path(u)) for u in d.utterances if u.set == "dev") for d in (a, b)}
    assert asv_train_files(a, True, out / "asv_a") == expected[a.root]
    unprotected = asv_train_files(b, False, out / "asv_b0")
    assert unprotected != expected[b.root]  # s3prl alone: A's tags joined to B's root
    assert asv_train_files(b, True, out / "asv_b") == expected[b.root]
    assert asv_train_files(a, True, out / "asv_a2") == expected[a.root]
