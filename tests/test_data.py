"""Audio validation, the skipping dataset, cropping, bucketing, sharding and resume."""

import itertools
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from pruned_upstream.data.audio import AudioError, check_audio, probe_audio, read_audio, resample_wav
from pruned_upstream.data.dataset import AudioDataset, collate, crop_offset
from pruned_upstream.data.manifest import AudioEntry, find_audio, read_manifest, write_manifest
from pruned_upstream.data.sampler import LengthBucketSampler

SR = 16000


def _tone(seconds: float, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """One good file of each length below, and one file for each way of being bad."""
    d = tmp_path_factory.mktemp("audio")
    for name, sec in (("good_a", 1.0), ("good_b", 0.6), ("sub/good_c", 2.0)):
        (d / name).parent.mkdir(exist_ok=True)
        sf.write(d / f"{name}.wav", _tone(sec), SR, subtype="PCM_16")
    sf.write(d / "rate8k.wav", _tone(1.0, sr=8000), 8000, subtype="PCM_16")
    sf.write(d / "stereo.wav", np.stack([_tone(1.0), 0.5 * _tone(1.0)], axis=1), SR, subtype="PCM_16")
    sf.write(d / "zeros.wav", np.zeros(SR, np.float32), SR, subtype="PCM_16")
    sf.write(d / "quiet.wav", 1e-4 * _tone(1.0), SR, subtype="FLOAT")
    sf.write(d / "short.wav", _tone(0.1), SR, subtype="PCM_16")
    sf.write(d / "empty.wav", np.zeros(0, np.float32), SR, subtype="PCM_16")
    nan = _tone(1.0)
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    full = (d / "good_a.wav").read_bytes()
    (d / "truncated.wav").write_bytes(full[: len(full) // 2])  # header promises twice the data
    (d / "text.wav").write_text("this is not audio\n" * 20)
    return d


BAD = {
    "truncated.wav": "unreadable",
    "text.wav": "unreadable",
    "missing.wav": "unreadable",
    "empty.wav": "empty",
    "zeros.wav": "silent",
    "quiet.wav": "silent",
    "nan.wav": "nonfinite",
    "stereo.wav": "multichannel",
    "short.wav": "too_short",
}


@pytest.mark.parametrize("name,reason", sorted(BAD.items()))
def test_read_audio_names_file_and_reason(audio_dir, name, reason):
    with pytest.raises(AudioError) as info:
        read_audio(audio_dir / name, min_samples=SR // 2)
    assert info.value.reason == reason
    assert name in str(info.value) and reason in str(info.value)
    assert check_audio(audio_dir / name, min_samples=SR // 2) == reason


def test_good_file_reads_as_mono_float(audio_dir):
    wav = read_audio(audio_dir / "good_a.wav")
    assert wav.dtype == torch.float32 and wav.shape == (SR,)
    assert check_audio(audio_dir / "good_a.wav") is None
    assert probe_audio(audio_dir / "good_a.wav") == SR


def test_other_rate_is_resampled_or_refused(audio_dir):
    wav = read_audio(audio_dir / "rate8k.wav")
    assert wav.shape == (SR,) and probe_audio(audio_dir / "rate8k.wav") == SR
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(np.argmax(spectrum) * SR / wav.shape[0] - 440.0) < 2.0  # the tone keeps its pitch
    with pytest.raises(AudioError, match="8000 Hz") as info:
        read_audio(audio_dir / "rate8k.wav", resample=False)
    assert info.value.reason == "wrong_rate"


def test_resample_wav_length_and_identity():
    x = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    assert resample_wav(x, 22050, SR).shape == (SR,)
    assert resample_wav(x, SR, SR) is x


def test_stereo_mixdown_averages_channels(audio_dir):
    wav = read_audio(audio_dir / "stereo.wav", mixdown=True)
    expected = 0.75 * _tone(1.0)
    assert torch.allclose(wav, torch.from_numpy(expected), atol=2 / 32768)


def test_header_probe_catches_header_problems_only(audio_dir):
    with pytest.raises(AudioError, match="truncated"):
        probe_audio(audio_dir / "truncated.wav")
    assert probe_audio(audio_dir / "zeros.wav") == SR  # silence needs decoding to be seen


def test_find_audio_is_recursive_sorted_and_filtered(audio_dir, tmp_path):
    files = find_audio(audio_dir)
    assert files == sorted(files) and audio_dir / "sub" / "good_c.wav" in files
    with pytest.raises(FileNotFoundError, match="no .flac files"):
        find_audio(audio_dir, exts=(".flac",))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_audio(tmp_path / "nowhere")


def test_manifest_round_trip_relative_and_absolute(audio_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere.wav"
    sf.write(elsewhere, _tone(0.5), SR, subtype="PCM_16")
    entries = [AudioEntry(audio_dir / "sub" / "good_c.wav", 2 * SR), AudioEntry(elsewhere, SR // 2)]
    tsv = write_manifest(tmp_path / "m" / "train.tsv", entries, root=audio_dir)
    lines = tsv.read_text().splitlines()
    assert lines[0] == str(audio_dir.resolve())
    assert lines[1] == f"sub/good_c.wav\t{2 * SR}" and lines[2] == f"{elsewhere.resolve()}\t{SR // 2}"
    assert [(e.path.resolve(), e.num_samples) for e in read_manifest(tsv)] == [
        (p.resolve(), n) for p, n in entries
    ]


def test_manifest_rejects_malformed_line(tmp_path):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("/data\na.wav\t100\nb.wav 200\n")
    with pytest.raises(ValueError, match=r"bad.tsv:3"):
        read_manifest(tsv)


def test_dataset_skips_and_counts_per_reason(audio_dir, caplog):
    files = [audio_dir / n for n in BAD if n != "missing.wav"]
    files += [audio_dir / "good_a.wav", audio_dir / "rate8k.wav", audio_dir / "sub" / "good_c.wav"]
    with caplog.at_level(logging.WARNING, logger="pruned_upstream.data"):
        ds = AudioDataset(files, crop_samples=SR, min_samples=SR // 2, seed=0)
    assert len(ds) == 4  # stereo.wav is down-mixed (mixdown=True by default)
    assert {k: v for k, v in ds.skipped.items() if v} == {
        "unreadable": 2, "empty": 1, "silent": 2, "nonfinite": 1, "too_short": 1
    }
    assert "zeros.wav" in caplog.text and "skipped 7" in caplog.text
    assert ds.lengths.tolist() == [SR, SR, SR, SR]  # good_c (2 s) is cropped to 1 s
    assert ds.summary() == "audio: 4 files used, 7 skipped (unreadable=2, empty=1, nonfinite=1, silent=2, too_short=1)"
    strict = AudioDataset(files, crop_samples=SR, min_samples=SR // 2, mixdown=False)
    assert len(strict) == 3 and strict.skipped["multichannel"] == 1
    assert all(not torch.all(ds[i] == 0) for i in range(len(ds)))


def test_dataset_substitutes_file_that_fails_when_read(audio_dir, caplog):
    files = [audio_dir / "good_a.wav", audio_dir / "zeros.wav", audio_dir / "good_b.wav"]
    ds = AudioDataset(files, crop_samples=SR, min_samples=0, scan="header")
    assert len(ds) == 3 and ds.skipped["silent"] == 0  # the header looks fine
    with caplog.at_level(logging.WARNING, logger="pruned_upstream.data"):
        item = ds[1]
    assert ds.skipped["silent"] == 1 and "zeros.wav" in caplog.text
    assert torch.equal(item, read_audio(audio_dir / "good_b.wav"))  # the next usable file
    ds[1]
    assert ds.skipped["silent"] == 1  # counted once


def test_dataset_with_nothing_usable_raises(audio_dir):
    with pytest.raises(ValueError, match="no usable audio"):
        AudioDataset([audio_dir / "zeros.wav"], min_samples=0)


def test_crop_is_a_reproducible_slice(audio_dir):
    path = audio_dir / "sub" / "good_c.wav"
    full = read_audio(path)
    a = AudioDataset([path], crop_samples=SR // 4, min_samples=0, seed=3)
    b = AudioDataset([path], crop_samples=SR // 4, min_samples=0, seed=3)
    starts = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        crop = a[0]
        assert crop.shape == (SR // 4,) and torch.equal(crop, b[(0, epoch)])
        start = crop_offset(3, epoch, 0, full.shape[0], SR // 4)
        assert torch.equal(crop, full[start : start + SR // 4])
        starts.add(start)
    assert len(starts) > 1  # the epoch changes the crop


def test_crop_offset_is_uniform_over_valid_starts():
    length, crop = 1000, 900
    offsets = np.array([crop_offset(0, 0, i, length, crop) for i in range(4000)])
    assert offsets.min() == 0 and offsets.max() == length - crop
    counts = np.bincount(offsets, minlength=length - crop + 1)
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()
    assert crop_offset(0, 0, 0, 500, crop) == 0  # shorter than the crop: kept whole


def test_collate_pads_with_zeros_and_keeps_lengths():
    wav, lengths = collate([torch.ones(3), torch.full((5,), 2.0)])
    assert wav.shape == (2, 5) and wav.dtype == torch.float32
    assert lengths.tolist() == [3, 5] and lengths.dtype == torch.long
    assert wav[0].tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        collate([torch.ones(2, 3)])


def _clustered_lengths(seed=0, per_cluster=24):
    """Four clusters of lengths far apart (+-5 %), shuffled."""
    rng = np.random.default_rng(seed)
    centers = [1000, 5000, 20000, 80000]
    lengths = [int(c * rng.uniform(0.95, 1.05)) for c in centers for _ in range(per_cluster)]
    return [lengths[i] for i in rng.permutation(len(lengths))]


def test_bucketing_groups_similar_lengths_and_sees_every_item_once():
    lengths = _clustered_lengths()
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 12
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            lens = [lengths[i] for i in b]
            assert max(lens) / min(lens) < 1.2  # one cluster per batch
    assert sampler.plan(0) != sampler.plan(1)  # reshuffled every epoch
    assert sampler.plan(0) == LengthBucketSampler(lengths, batch_size=8, seed=1).plan(0)
    assert sampler.plan(0) != LengthBucketSampler(lengths, batch_size=8, seed=2).plan(0)


def test_sample_budget_bounds_padded_batch_size():
    lengths = _clustered_lengths()
    budget = 200_000
    sampler = LengthBucketSampler(lengths, max_batch_samples=budget, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= budget for b in batches)
    assert any(len(b) > 8 for b in batches)  # short items fill big batches
    with pytest.raises(ValueError, match="item .* > max_batch_samples 50000"):
        LengthBucketSampler(lengths, max_batch_samples=50_000)
    with pytest.raises(ValueError, match="exactly one"):
        LengthBucketSampler(lengths)


def test_ddp_ranks_get_disjoint_equal_covering_shares():
    lengths = _clustered_lengths()
    ranks = [LengthBucketSampler(lengths, batch_size=8, seed=5, rank=r, world_size=2) for r in range(2)]
    shares = [[i for b in s for i in b] for s in ranks]
    assert len(list(ranks[0])) == len(list(ranks[1])) == 6
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(len(lengths)))


def test_ddp_drops_remainder_batches_so_ranks_stay_in_step():
    lengths = _clustered_lengths()[:88]  # 11 batches of 8
    ranks = [LengthBucketSampler(lengths, batch_size=8, seed=5, rank=r, world_size=2) for r in range(2)]
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == 5
    assert not {i for b in b0 for i in b} & {i for b in b1 for i in b}
    with pytest.raises(ValueError, match="rank 2"):
        LengthBucketSampler(lengths, batch_size=8, rank=2, world_size=2)


def test_sampler_resume_yields_exactly_the_remaining_batches():
    lengths = _clustered_lengths()
    full = LengthBucketSampler(lengths, max_batch_samples=200_000, seed=7, rank=1, world_size=2)
    full.set_epoch(3)
    expected = list(full)
    first = LengthBucketSampler(lengths, max_batch_samples=200_000, seed=7, rank=1, world_size=2)
    first.set_epoch(3)
    consumed = list(itertools.islice(iter(first), 4))
    state = first.state_dict()
    assert state["epoch"] == 3 and state["batch"] == 4
    resumed = LengthBucketSampler(lengths, max_batch_samples=200_000, seed=7, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a training loop re-selecting the same epoch keeps the position
    assert consumed + list(resumed) == expected
    resumed.set_epoch(4)
    full.set_epoch(4)
    assert list(resumed) == list(full)
    assert first.state_dict(batches_done=2)["batch"] == 2
    other = LengthBucketSampler(lengths, max_batch_samples=200_000, seed=7, rank=1, world_size=4)
    with pytest.raises(ValueError, match="world_size=2"):
        other.load_state_dict(state)


def test_resumed_loader_is_bit_identical(audio_dir):
    files = [audio_dir / "good_a.wav", audio_dir / "rate8k.wav", audio_dir / "sub" / "good_c.wav",
             audio_dir / "good_b.wav"]

    def loader():
        ds = AudioDataset(files, crop_samples=SR // 2, min_samples=0, seed=11)
        sampler = LengthBucketSampler(ds.lengths, batch_size=2, seed=11)
        return ds, sampler, DataLoader(ds, batch_sampler=sampler, collate_fn=collate)

    def run(ds, sampler, dl, epochs, stop_after=None):
        out = []
        for epoch in epochs:
            ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            for wav, lengths in dl:
                out.append((wav, lengths))
                if stop_after is not None and len(out) == stop_after:
                    return out, sampler.state_dict()
        return out, None

    reference, _ = run(*loader(), epochs=[0, 1])
    head, state = run(*loader(), epochs=[0, 1], stop_after=3)  # stopped inside epoch 1
    ds, sampler, dl = loader()
    sampler.load_state_dict(state)
    tail, _ = run(ds, sampler, dl, epochs=[state["epoch"]])
    assert len(head + tail) == len(reference) == 4
    for (w, n), (w_ref, n_ref) in zip(head + tail, reference):
        assert torch.equal(w, w_ref) and torch.equal(n, n_ref)


def test_path_table_round_trips_any_path_and_shares_its_buffer():
    from pruned_upstream.data.manifest import PathTable

    odd = "/data/caf\udce9.wav"  # a non-UTF-8 byte, as os.fsdecode gives it
    table = PathTable(["/a/b.wav", "/données/ü.flac", odd])
    assert list(table) == ["/a/b.wav", "/données/ü.flac", odd] and table[-1] == odd
    sub = table.take(np.array([2, 0]))
    assert list(sub) == [odd, "/a/b.wav"] and sub._blob is table._blob
    with pytest.raises(IndexError, match="out of range"):
        table[3]
