"""Hostile audio files: each is used (resampled, down-mixed, cropped) or skipped and counted by reason.

Every kind of file is written here with soundfile; the outcome is checked when
the dataset is built (scan "full" and "header") and when an item is read
(a file that turns bad after the scan, a read that fails with PermissionError,
which root cannot provoke with chmod, so the reader is patched). No batch ever
holds NaN/inf. A manifest with lengths builds without opening any file, and a
training run's log names the files used and skipped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from pruned_upstream.data import audio as audio_mod
from pruned_upstream.data import manifest as manifest_mod
from pruned_upstream.data.audio import read_audio
from pruned_upstream.data.dataset import AudioDataset, collate
from pruned_upstream.data.manifest import LOG_EACH, read_manifest, scan_audio
from pruned_upstream.data.sampler import LengthBucketSampler

SR = 16000
CROP = 16000  # 1 s: the long file is 60 times longer
MIN = 8000


def tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _with(value, at=(100, 5000)):
    wav = tone(1.0, SR)
    wav[list(at)] = value
    return wav


# name -> (how to write it, what happens: "used:<how>:<16 kHz length>" or the skip reason,
#          what a header scan sees at build time: "used" or the reason)
CASES = {
    "rate8k.wav": (lambda p: sf.write(p, tone(1.0, 8000), 8000, subtype="PCM_16"), f"used:resampled:{SR}", "used"),
    "rate22050.wav": (lambda p: sf.write(p, tone(1.0, 22050), 22050, subtype="PCM_16"), f"used:resampled:{SR}", "used"),
    "rate44100.flac": (lambda p: sf.write(p, tone(1.0, 44100), 44100, subtype="PCM_16"), f"used:resampled:{SR}", "used"),
    "rate48k.wav": (lambda p: sf.write(p, tone(1.0, 48000), 48000, subtype="PCM_16"), f"used:resampled:{SR}", "used"),
    "odd_length_22050.wav": (lambda p: sf.write(p, tone(0.77, 22050), 22050, subtype="PCM_16"),
                             f"used:resampled:{math.ceil(round(0.77 * 22050) * SR / 22050)}", "used"),
    "pcm24.wav": (lambda p: sf.write(p, tone(1.0, SR), SR, subtype="PCM_24"), f"used:as is:{SR}", "used"),
    "pcm24.flac": (lambda p: sf.write(p, tone(1.0, SR), SR, subtype="PCM_24"), f"used:as is:{SR}", "used"),
    "stereo.wav": (lambda p: sf.write(p, np.stack([tone(1.0, SR), tone(1.0, SR, amp=0.25)], 1), SR, subtype="PCM_16"),
                   f"used:down-mixed:{SR}", "used"),
    "stereo48k.flac": (lambda p: sf.write(p, np.stack([tone(1.0, 48000), tone(1.0, 48000, amp=0.25)], 1), 48000),
                       f"used:down-mixed:{SR}", "used"),
    "long.wav": (lambda p: sf.write(p, tone(60.0, SR, freq=3.0), SR, subtype="PCM_16"), f"used:cropped:{60 * SR}", "used"),
    "nan.wav": (lambda p: sf.write(p, _with(np.nan), SR, subtype="FLOAT"), "nonfinite", "used"),
    "inf.wav": (lambda p: sf.write(p, _with(np.inf), SR, subtype="FLOAT"), "nonfinite", "used"),
    "nan_double.wav": (lambda p: sf.write(p, _with(np.nan).astype(np.float64), SR, subtype="DOUBLE"), "nonfinite", "used"),
    # finite float samples near float32's limit: averaging the channels overflows to inf
    "huge_stereo.wav": (lambda p: sf.write(p, np.full((SR, 2), 3e38, np.float32), SR, subtype="FLOAT"),
                        "nonfinite", "used"),
    "zeros.wav": (lambda p: sf.write(p, np.zeros(SR, np.float32), SR, subtype="PCM_16"), "silent", "used"),
    "zeros24.flac": (lambda p: sf.write(p, np.zeros(SR, np.float32), SR, subtype="PCM_24"), "silent", "used"),
    "text.wav": (lambda p: p.write_text("not audio at all\n" * 50), "unreadable", "unreadable"),
    "random_bytes.flac": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), "unreadable", "unreadable"),
    "zero_bytes.wav": (lambda p: p.write_bytes(b""), "unreadable", "unreadable"),
    "no_frames.wav": (lambda p: sf.write(p, np.zeros(0, np.float32), SR, subtype="PCM_16"), "empty", "empty"),
    "permission.wav": (lambda p: sf.write(p, tone(1.0, SR), SR, subtype="PCM_16"), "unreadable", "unreadable"),
}
DENIED = "permission.wav"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    for name, (write, _, _) in CASES.items():
        write(d / name)
    sf.write(d / "anchor.wav", tone(1.0, SR, freq=300.0), SR, subtype="PCM_16")  # always good
    return d


def deny_reads(monkeypatch, name: str) -> None:
    """Every way data/audio.py opens `name` raises PermissionError, as a chmod 000 file would for a non-root user."""
    def guard(real):
        def wrapped(file, *args, **kwargs):
            if str(file).endswith(name):
                raise PermissionError(13, "Permission denied", str(file))
            return real(file, *args, **kwargs)
        return wrapped
    monkeypatch.setattr(audio_mod, "open", guard(open), raising=False)  # the WAV header check
    monkeypatch.setattr(audio_mod.sf, "read", guard(sf.read))
    monkeypatch.setattr(audio_mod.sf, "info", guard(sf.info))


@pytest.fixture
def denied(monkeypatch):
    deny_reads(monkeypatch, DENIED)


def _dominant_hz(wav: torch.Tensor) -> float:
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    return float(np.argmax(spectrum)) * SR / wav.shape[0]


def check_used(path, how: str, length: int, item: torch.Tensor, ds: AudioDataset) -> None:
    """What a used file must look like: 16 kHz length, crop, and the documented transformation."""
    assert int(ds.num_samples[0]) == length and int(ds.lengths[0]) == min(length, CROP)
    assert item.dtype == torch.float32 and item.shape == (min(length, CROP),)
    assert bool(torch.isfinite(item).all())
    full = read_audio(path, mixdown=True)
    assert full.shape == (length,)
    if how == "resampled":
        assert abs(_dominant_hz(item) - 440.0) < 2.0  # the tone keeps its pitch at 16 kHz
        assert float(item[400:-400].abs().max()) == pytest.approx(0.5, abs=0.02)  # ends ring (filter edges)
    elif how == "down-mixed":
        assert float(item.abs().max()) == pytest.approx((0.5 + 0.25) / 2, abs=0.01)  # the channels' mean
    elif how == "as is":  # 24-bit: a quantisation step is 2^-23
        assert torch.allclose(item, torch.from_numpy(tone(1.0, SR)), atol=2.0 ** -22)
    elif how == "cropped":
        start = next(s for s in range(length - CROP + 1) if torch.equal(full[s : s + CROP], item))
        assert 0 <= start <= length - CROP
    else:
        raise AssertionError(f"unknown handling {how!r}")


@pytest.mark.parametrize("scan", ["full", "header"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_hostile_file_is_used_or_skipped_with_its_reason(hostile, denied, name, scan, caplog):
    _, outcome, at_header = CASES[name]
    path, anchor = hostile / name, hostile / "anchor.wav"
    at_build = ("used" if outcome.startswith("used:") else outcome) if scan == "full" else at_header
    with caplog.at_level(logging.WARNING, logger="pruned_upstream.data"):
        ds = AudioDataset([path, anchor], crop_samples=CROP, min_samples=MIN, scan=scan)
        if at_build != "used":  # skipped when the dataset is built, counted under its reason
            assert len(ds) == 1 and ds.skipped[at_build] == 1 and sum(ds.skipped.values()) == 1
            assert name in caplog.text and at_build in caplog.text
            assert ds.summary() == f"audio: 1 files used, 1 skipped ({at_build}=1)"
            return
        assert len(ds) == 2 and sum(ds.skipped.values()) == 0
        item = ds[0]
    if outcome.startswith("used:"):
        _, how, length = outcome.split(":")
        check_used(path, how, int(length), item, ds)
        assert sum(ds.skipped.values()) == 0
    else:  # a header scan cannot see it: caught when read, replaced by the next file, counted once
        assert torch.equal(item, ds[1]) and ds.skipped[outcome] == 1
        assert f"{name}: {outcome}" in caplog.text
        ds[0]
        assert ds.skipped[outcome] == 1


def _good(d, i: int):
    path = d / f"good{i}.wav"
    sf.write(path, tone(0.6 + 0.1 * i, SR, freq=200.0 + 50 * i), SR, subtype="PCM_16")  # shorter than CROP
    return path


def _turn_nan(p):
    sf.write(p, _with(np.nan), SR, subtype="FLOAT")


AFTER_SCAN = {  # how a file that passed the full scan goes bad before it is read
    "nan": (_turn_nan, "nonfinite"),
    "zeros": (lambda p: sf.write(p, np.zeros(SR, np.float32), SR, subtype="PCM_16"), "silent"),
    "text": (lambda p: p.write_text("gone\n"), "unreadable"),
    "deleted": (lambda p: p.unlink(), "unreadable"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: 44 + 100]), "unreadable"),
    "permission": (None, "unreadable"),
}


@pytest.mark.parametrize("change", sorted(AFTER_SCAN))
def test_file_that_turns_bad_after_the_scan_is_replaced_and_counted(tmp_path, monkeypatch, change, caplog):
    files = [_good(tmp_path, i) for i in range(3)]
    ds = AudioDataset(files, crop_samples=CROP, min_samples=MIN, scan="full")
    assert len(ds) == 3 and sum(ds.skipped.values()) == 0
    spoil, reason = AFTER_SCAN[change]
    if spoil is None:
        deny_reads(monkeypatch, files[1].name)
    else:
        spoil(files[1])
    with caplog.at_level(logging.WARNING, logger="pruned_upstream.data"):
        item = ds[1]
    assert torch.equal(item, ds[2])  # the next usable file, the same one every time
    assert ds.skipped[reason] == 1 and sum(ds.skipped.values()) == 1
    assert files[1].name in caplog.text and reason in caplog.text
    wav, lengths = collate([ds[i] for i in range(3)])
    assert bool(torch.isfinite(wav).all()) and lengths.tolist() == [ds[0].shape[0], ds[2].shape[0], ds[2].shape[0]]
    assert ds.skipped[reason] == 1  # counted once


EXPECTED_SKIPS = {}
for _name, (_, _outcome, _) in CASES.items():
    if not _outcome.startswith("used"):
        EXPECTED_SKIPS[_outcome] = EXPECTED_SKIPS.get(_outcome, 0) + 1


@pytest.mark.parametrize("scan", ["full", "header", "lengths"])
def test_no_batch_ever_holds_nan_or_inf(hostile, denied, tmp_path, scan):
    """Every hostile file in one dataset: after one epoch every bad file is counted under its
    reason, however shallow the scan (a manifest's lengths: nothing checked until read)."""
    names = sorted(CASES) + ["anchor.wav"]
    if scan == "lengths":
        tsv = tmp_path / "all.tsv"
        tsv.write_text(f"{hostile}\n" + "".join(f"{n}\t{SR}\n" for n in names))
        ds = AudioDataset(tsv, crop_samples=CROP, min_samples=MIN, scan=scan)
    else:
        ds = AudioDataset([hostile / n for n in names], crop_samples=CROP, min_samples=MIN, scan=scan)
    loader = DataLoader(ds, batch_sampler=LengthBucketSampler(ds.lengths, batch_size=4, seed=0), collate_fn=collate)
    seen = 0
    for wav, lengths in loader:
        assert bool(torch.isfinite(wav).all()), "a batch holds NaN/inf"
        assert wav.dtype == torch.float32 and int(lengths.max()) <= CROP and float(wav.abs().max()) <= 1.0
        seen += len(lengths)
    assert seen == len(ds)
    assert {k: v for k, v in ds.skipped.items() if v} == EXPECTED_SKIPS


def test_collate_refuses_nonfinite_items():
    with pytest.raises(ValueError, match="item 1 holds NaN/inf"):
        collate([torch.ones(3), torch.tensor([0.0, float("nan")])])


# ------------------------------------------------------------------- manifests at scale
def test_manifest_with_lengths_builds_without_touching_the_files(tmp_path, monkeypatch, caplog):
    """20,000 paths that do not exist: a scan='lengths' build opens none of them
    (any check would find them missing) and names only a few skipped files."""
    n = 20_000
    rng = np.random.default_rng(0)
    nums = rng.integers(MIN // 2, 40 * SR, size=n)
    nums[:3] = 0
    tsv = tmp_path / "big.tsv"
    tsv.write_text("/nonexistent/LibriSpeech\n" + "".join(f"train/{i}/{i}-0.flac\t{k}\n" for i, k in enumerate(nums)))

    def no_io(*args, **kwargs):
        raise AssertionError("a scan='lengths' build touched an audio file")
    for attr in ("read_audio", "probe_audio"):
        monkeypatch.setattr(manifest_mod, attr, no_io)
    monkeypatch.setattr(audio_mod.sf, "info", no_io)
    monkeypatch.setattr(audio_mod.sf, "read", no_io)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="pruned_upstream.data"):
        ds = AudioDataset(tsv, crop_samples=250_000, min_samples=MIN, scan="lengths")
    seconds = time.perf_counter() - start
    too_short = int(((nums > 0) & (nums < MIN)).sum())
    assert len(ds) == n - 3 - too_short and ds.skipped["empty"] == 3 and ds.skipped["too_short"] == too_short
    assert ds.paths[0] == "/nonexistent/LibriSpeech/train/3/3-0.flac"
    assert ds.lengths.dtype == np.int64 and int(ds.lengths.max()) <= 250_000
    path_bytes = sum(len(f"/nonexistent/LibriSpeech/train/{i}/{i}-0.flac") for i in range(n))
    assert ds.paths.nbytes() == path_bytes + 16 * len(ds)  # packed: the paths' bytes and two int64 per item
    assert caplog.text.count("skipping audio file") <= 3 + LOG_EACH  # named a few, not thousands
    assert f"too_short={too_short}" in caplog.text
    assert seconds < 10.0, f"{n} entries took {seconds:.1f} s"  # measured ~0.03 s (docs/data.md, Scale)


def test_manifest_reading_keeps_relative_and_absolute_paths(tmp_path):
    tsv = tmp_path / "m.tsv"
    tsv.write_text("/data/root\nrel/a.flac\t100\n/abs/b.wav\t200\n\n")
    assert [(str(e.path), e.num_samples) for e in read_manifest(tsv)] == [("/data/root/rel/a.flac", 100),
                                                                            ("/abs/b.wav", 200)]
    entries, skipped = scan_audio(tsv, "lengths", min_samples=150)
    assert [str(e.path) for e in entries] == ["/abs/b.wav"] and skipped["too_short"] == 1
    with pytest.raises(ValueError, match=r"m2.tsv:2"):
        (tmp_path / "m2.tsv").write_text("/r\na.wav\tx12\n")
        read_manifest(tmp_path / "m2.tsv")


# ------------------------------------------------------------------- the training log
def test_training_log_states_files_used_and_skipped(tmp_path, caplog):
    """The trainer's data set-up (`build_data`, what `prune` runs first) logs used and skipped
    files by reason; what the header scan could not see is caught in the loop, never fed."""
    from pruned_upstream.config_files import load_config
    from pruned_upstream.training.distributed import DistEnv
    from pruned_upstream.training.trainer import build_data

    rng = np.random.default_rng(0)
    for i in range(4):
        n = int(rng.integers(6400, 9000))
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * np.arange(n) / SR) + 0.02 * rng.standard_normal(n)
        sf.write(tmp_path / f"u{i}.wav", wav.astype(np.float32), SR)
    (tmp_path / "bad.wav").write_text("not audio\n")
    _turn_nan(tmp_path / "nan.wav")
    rows = [f"u{i}.wav\t8000" for i in range(4)] + ["bad.wav\t8000", "nan.wav\t16000", "missing.wav\t8000"]
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\n" + "\n".join(rows) + "\n")
    cfg = load_config("demo", [f"data.source={tmp_path / 'train.tsv'}", "data.scan=header", "data.crop=8000",
                               "data.min_samples=1000", "data.num_workers=0", "train.batch_size=2"])
    with caplog.at_level(logging.INFO, logger="pruned_upstream"):
        dataset, _, loader = build_data(cfg, tmp_path / "run", DistEnv())
    line = f"{tmp_path / 'train.tsv'}: audio: 5 files used, 2 skipped (unreadable=2)"
    assert line in caplog.text  # at start: nan.wav passes a header scan...
    for wav, _ in loader:
        assert bool(torch.isfinite(wav).all())
    assert dataset.skipped["nonfinite"] == 1  # ...and is caught when read, never fed


@pytest.mark.parametrize("workers", [0, 2])
def test_files_found_bad_in_workers_reach_the_runs_summary(tmp_path, workers):
    """A manifest's lengths check nothing: the text file named .wav is found when read, by a
    DataLoader worker's copy of the dataset, and still counted once in summary.json."""
    from training_fixtures import tiny, write_manifest

    from pruned_upstream.training.run import run_prune
    from pruned_upstream.training.trainer import BAD_AUDIO_LOG

    (tmp_path / "audio").mkdir()
    manifest = Path(write_manifest(tmp_path / "audio", 6, seed=3))
    (tmp_path / "audio" / "text.wav").write_text("not audio at all\n" * 2000)
    manifest.write_text(manifest.read_text() + "text.wav\t9000\n")
    out = tmp_path / "run"
    assert run_prune("demo", tiny(str(manifest), "data.scan=lengths", f"data.num_workers={workers}",
                                  "train.steps=8", "train.save_every=8"), out) == 0
    skipped = json.loads((out / "summary.json").read_text())["skipped_audio"]
    assert skipped["unreadable"] == 1 and sum(skipped.values()) == 1, skipped
    lines = (out / BAD_AUDIO_LOG).read_text().splitlines()
    assert lines and all(line == f"unreadable\t{tmp_path / 'audio' / 'text.wav'}" for line in lines), lines
