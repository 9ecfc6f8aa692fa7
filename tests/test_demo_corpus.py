"""The espeak-ng demo corpus, and its Speech Commands layout read by s3prl's own dataset classes."""

import ast
import hashlib
import re
from pathlib import Path
from typing import List, Tuple, Union

import pytest
import numpy as np
import soundfile as sf
import s3prl.downstream.speech_commands.dataset as s3prl_sc

from pruned_upstream.data.audio import check_audio
from pruned_upstream.data.dataset import AudioDataset
from pruned_upstream.data.manifest import read_manifest
from pruned_upstream.data.speech import EspeakNotFoundError
from pruned_upstream.data.demo_corpus import (
    KEYWORDS,
    UNKNOWN_WORDS,
    make_demo_corpus,
    make_speakers,
    read_metadata,
    split_of,
    write_speech_commands_layout,
)

VOICES = ("en-us+m3", "en-gb+f2", "en-us+f4")  # train, valid, test speakers
SMALL = dict(n_words=2, voices=VOICES, n_unknown=1, n_sentences=2, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, make_demo_corpus(out, **SMALL)


def test_corpus_is_16k_mono_nonsilent_with_manifest(corpus):
    out, manifest = corpus
    entries = read_manifest(manifest)
    rows = read_metadata(out)
    speech = [r for r in rows if r["kind"] != "noise"]
    assert len(entries) == len(speech) == 3 * (2 + 1) + 2
    for entry in entries:
        info = sf.info(str(entry.path))
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, entry.num_samples)
        assert check_audio(entry.path, min_samples=4000) is None
    assert {r["text"] for r in rows if r["kind"] == "keyword"} == set(KEYWORDS[:2])
    assert {r["label"] for r in rows if r["kind"] == "unknown"} == {"_unknown_"}
    assert {r["voice"] for r in speech} == set(VOICES)
    assert [r["split"] for r in rows if r["kind"] == "keyword"][::2] == ["train", "valid", "test"]
    full = AudioDataset(manifest, crop_samples=16000, min_samples=0, scan="full")  # decodes every file
    assert len(full) == len(entries) and sum(full.skipped.values()) == 0


def test_the_full_scan_would_catch_a_silent_file(corpus, tmp_path):
    """The check above can fail: the same manifest with one file silenced loses that file."""
    _, manifest = corpus
    entries = read_manifest(manifest)
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(entries[0].num_samples, dtype=np.float32), 16000, subtype="PCM_16")
    lines = manifest.read_text().splitlines()
    lines[1] = f"{silent}\t{entries[0].num_samples}"
    copy = tmp_path / "manifest.tsv"
    copy.write_text("\n".join(lines) + "\n")
    assert AudioDataset(copy, crop_samples=16000, min_samples=0, scan="lengths").skipped["silent"] == 0  # trusted
    full = AudioDataset(copy, crop_samples=16000, min_samples=0, scan="full")
    assert full.skipped["silent"] == 1 and len(full) == len(entries) - 1


def test_corpus_is_deterministic_given_the_seed(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    make_demo_corpus(again, **SMALL)
    for row in read_metadata(out):
        assert (out / row["path"]).read_bytes() == (again / row["path"]).read_bytes(), row["path"]
    assert (out / "metadata.csv").read_text() == (again / "metadata.csv").read_text()


def test_seed_changes_the_speakers():
    a, b = make_speakers(VOICES, seed=0), make_speakers(VOICES, seed=1)
    assert [(s.speed, s.pitch) for s in a] != [(s.speed, s.pitch) for s in b]
    assert all(split_of(s.id) == s.split for s in a + b)


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without espeak-ng
    with pytest.raises(EspeakNotFoundError, match="apt-get install espeak-ng"):
        make_demo_corpus(tmp_path / "c", **SMALL)


def _s3prl_split_dataset():
    """s3prl's own `split_dataset` from the installed speech_commands/expert.py.

    expert.py cannot be imported here: its `catalyst` import fails on Python
    3.11 (catalyst 21.5 uses collections.MutableMapping). The function is
    compiled from s3prl's source as it stands, so the test runs s3prl's code.
    """
    path = Path(s3prl_sc.__file__).with_name("expert.py")
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "split_dataset")
    namespace = {"re": re, "hashlib": hashlib, "Path": Path, "List": List, "Tuple": Tuple, "Union": Union}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["split_dataset"]


def test_speech_commands_layout_is_read_by_s3prl(corpus, tmp_path):
    out, _ = corpus
    roots = write_speech_commands_layout(out, tmp_path / "sc")
    train_list, valid_list = _s3prl_split_dataset()(roots["speech_commands_root"])
    datarc = {k: str(v) for k, v in roots.items()}
    train = s3prl_sc.SpeechCommandsDataset(train_list, **datarc)
    dev = s3prl_sc.SpeechCommandsDataset(valid_list, **datarc)
    test = s3prl_sc.SpeechCommandsTestingDataset(**datarc)
    speakers = {s.split: s.id for s in make_speakers(VOICES, seed=0)}

    def labels(ds):
        return sorted(s3prl_sc.CLASSES[ds[i][1]] for i in range(len(ds)))

    # 3 words each of the train and valid speakers, plus the 2 noise files as _silence_.
    assert labels(train) == labels(dev) == sorted(["yes", "no", "_unknown_", "_silence_", "_silence_"])
    assert all(speakers["train"] in str(p) for _, p in train_list)
    assert all(speakers["valid"] in str(p) for _, p in valid_list)
    # test: the test speaker's 3 words + 6 one-second noise cuts (2 files x 3 s).
    assert labels(test) == sorted(["yes", "no", "_unknown_"] + ["_silence_"] * 6)
    silence = test.class2index["_silence_"]
    assert all(len(wav) == 16000 for wav, label, _ in (test[i] for i in range(len(test))) if label == silence)
    valid_txt = (roots["speech_commands_root"] / "validation_list.txt").read_text().split()
    assert sorted(valid_txt) == sorted(f"{c}/{Path(p).name}" for c, p in valid_list)
    testing_txt = (roots["speech_commands_root"] / "testing_list.txt").read_text().split()
    test_words = (*KEYWORDS[:2], UNKNOWN_WORDS[0])
    assert sorted(testing_txt) == sorted(f"{w}/{speakers['test']}_nohash_0.wav" for w in test_words)
    with pytest.raises(FileExistsError, match="not empty"):
        write_speech_commands_layout(out, tmp_path / "sc")
