"""A small two-speaker mixture corpus for SD, laid out as SUPERB's Libri2Mix diarization data.

The real data (s3prl ``downstream/docs/superb.md``, "SD: Speaker
Diarization"): LibriMix (github.com/s3prl/LibriMix) ``generate_librimix_sd.sh``
simulates Libri2Mix (16 kHz, ``max`` mode, ``mix_both``: two LibriSpeech
utterances, both starting at sample 0, plus WHAM! noise), then its
``scripts/prepare_diarization.py --target_dir DATA --source_dir
Libri2Mix/wav16k/max/metadata`` writes Kaldi-style ``DATA/{train,dev,test}``.
Each holds (``process_metadata`` there; read by s3prl's
``downstream/diarization/dataset.py`` ``KaldiData``):

* ``wav.scp``   ``<mix_id> <absolute wav path>``; ``mix_id`` is
  ``<spk1>-<chapter>-<utt>_<spk2>-<chapter>-<utt>``;
* ``segments``  ``<seg_id> <mix_id> <start> <end>`` (seconds), one per
  speech span of each source, ``seg_id = <mix_id>_<start ms:06d>_<end ms:06d>``;
* ``utt2spk``   ``<seg_id> <speaker>``;
* ``spk2utt``   ``<speaker> <mix_id> <mix_id> ...``: LibriMix lists the
  *recording* once per segment (not the segment ids Kaldi would), in first-seen order;
* ``reco2dur``  ``<mix_id> <samples / 16000>``;
* ``rttm``      ``SPEAKER<TAB><mix_id><TAB>1<TAB><start><TAB><dur><TAB><NA><TAB><NA><TAB><speaker><TAB><NA>``,
  the reference dscore scores against (s3prl ``diarization/score.sh``).

s3prl reads ``segments``, ``utt2spk``, ``wav.scp``, ``reco2dur`` and
``spk2utt`` (``KaldiData.__init__``); labels are ``np.rint(t * 16000 /
frame_shift)`` frames of each segment.

Here the LibriSpeech speakers are espeak-ng voices (voice, pitch), each source
is one or two phrases placed at chosen sample offsets (multiples of 1 ms, the
phrase trimmed of espeak's silences and zero-padded to whole milliseconds), so
every start and end in ``segments``/``rttm`` is exact; the second source
starts inside, or just after, the first one's speech, giving overlapped and
single-speaker regions. Speakers of train, dev and test are disjoint, as
LibriSpeech's splits are. No torch or s3prl import at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
MS = SAMPLE_RATE // 1000  # samples per millisecond
SPLIT_DIRS = {"train": "train-100", "dev": "dev", "test": "test"}  # Libri2Mix/wav16k/max/<dir>
MIN_SOLO = 0.4  # seconds each speaker speaks alone, at least
KALDI_FILES = ("wav.scp", "segments", "utt2spk", "spk2utt", "reco2dur", "rttm")
PHRASES = (
    "the bright lamp stood near the window", "she carried water up the hill",
    "a cold wind moved over the field", "we packed the books into boxes",
    "green leaves fell on the quiet road", "he opened the door very slowly",
    "the market closes early on sunday", "our train arrived ten minutes late",
    "birds sang loudly before the rain", "please write your name on the card",
    "the children painted a tall tower", "music played softly in the hall",
)
# (espeak-ng voice, pitch): one "LibriSpeech speaker" each; split -> speakers (disjoint).
SPEAKERS = {
    "train": (("en-us+m3", 40), ("en-us+f2", 60), ("en-gb+m1", 35), ("en-gb+f4", 70)),
    "dev": (("en-gb-scotland+m5", 45), ("en-029+f1", 65)),
    "test": (("en-gb-x-rp+m7", 30), ("en-us+f5", 75)),
}


@dataclass(frozen=True)
class Segment:
    speaker: str
    start: int  # samples, a multiple of MS
    end: int


def trim_ms(wav: np.ndarray, rel: float = 0.02) -> np.ndarray:
    """``wav`` without leading/trailing samples below ``rel`` x peak, zero-padded to whole ms."""
    loud = np.flatnonzero(np.abs(wav) > rel * float(np.abs(wav).max()))
    wav = wav[loud[0]: loud[-1] + 1]
    return np.pad(wav, (0, -len(wav) % MS)).astype(np.float32)


def speaker_id(split: str, index: int) -> str:
    """Numeric ids like LibriSpeech's (``prepare_diarization.py`` splits ids on '-')."""
    return str({"train": 1000, "dev": 2000, "test": 3000}[split] + index)


def _phrase(text: str, voice: tuple[str, int], cache: dict) -> np.ndarray:
    from pruned_upstream.data.speech import Voice, speak_text

    key = (text, voice)
    if key not in cache:
        wav = trim_ms(speak_text(text, Voice(voice[0], speed=165, pitch=voice[1])))
        cache[key] = wav / max(1e-6, float(np.abs(wav).max()))  # peak 1
    return cache[key]


def _source_plan(rng: np.random.Generator, first_start: int, n_phrases: int) -> list[tuple[int, int]]:
    """(gap before, phrase index) pairs; the first gap is ``first_start`` samples."""
    gaps = [first_start] + [int(rng.integers(250, 600)) * MS for _ in range(n_phrases - 1)]
    return [(gap, int(rng.integers(len(PHRASES)))) for gap in gaps]


def _place(plan, voice, spk, cache, offset=0) -> tuple[list[tuple[int, np.ndarray]], list[Segment]]:
    pieces, segments, t = [], [], offset
    for gap, phrase in plan:
        t += gap
        wav = _phrase(PHRASES[phrase], voice, cache)
        pieces.append((t, wav))
        segments.append(Segment(spk, t, t + len(wav)))
        t += len(wav)
    return pieces, segments


def make_mixture(rng: np.random.Generator, split: str, cache: dict) -> tuple[np.ndarray, list[Segment], str]:
    """One two-speaker recording: (16 kHz float32 mixture, segments, mix_id)."""
    pool = SPEAKERS[split]
    a, b = rng.choice(len(pool), size=2, replace=False)
    spk_a, spk_b = speaker_id(split, int(a)), speaker_id(split, int(b))
    pieces_a, segs_a = _place(_source_plan(rng, int(rng.integers(100, 400)) * MS, int(rng.integers(1, 3))),
                              pool[a], spk_a, cache)
    end_a = segs_a[0].end
    # The second speaker starts 0.8 s before to 0.3 s after the end of the first phrase of the first.
    start_b = max(MS, end_a + int(rng.integers(-800, 300)) * MS)
    pieces_b, segs_b = _place(_source_plan(rng, start_b, int(rng.integers(1, 3))), pool[b], spk_b, cache)
    length = max(s.end for s in segs_a + segs_b) + int(rng.integers(200, 400)) * MS
    mix = np.zeros(length, dtype=np.float32)
    for gain, pieces in ((float(rng.uniform(0.5, 0.8)), pieces_a), (float(rng.uniform(0.5, 0.8)), pieces_b)):
        for start, wav in pieces:
            mix[start: start + len(wav)] += gain * wav
    mix += 0.003 * rng.standard_normal(length).astype(np.float32)  # mix_both: a little noise
    mix /= max(1.0, float(np.abs(mix).max()) / 0.95)
    chapter = int(rng.integers(100, 999))
    utt_a, utt_b = (int(x) for x in rng.integers(0, 9999, size=2))
    mix_id = f"{spk_a}-{chapter}-{utt_a:04d}_{spk_b}-{chapter + 1}-{utt_b:04d}"
    return mix, segs_a + segs_b, mix_id


def solo_seconds(segments: list[Segment]) -> dict[str, float]:
    """Seconds each speaker speaks alone."""
    end = max(seg.end for seg in segments)
    active = {seg.speaker: np.zeros(end, bool) for seg in segments}
    for seg in segments:
        active[seg.speaker][seg.start: seg.end] = True
    total = np.sum(list(active.values()), axis=0)
    return {spk: float((mask & (total == 1)).sum()) / SAMPLE_RATE for spk, mask in active.items()}


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)


def write_kaldi_dir(target: Path, recordings: list[tuple[str, Path, int, list[Segment]]]) -> None:
    """The six files ``prepare_diarization.py`` writes, for ``(mix_id, wav, samples, segments)``."""
    lines = {name: [] for name in KALDI_FILES}
    spk2utt: dict[str, list[str]] = {}
    for mix_id, wav_path, samples, segments in recordings:
        lines["wav.scp"].append(f"{mix_id} {wav_path}")
        for seg in segments:
            start, end = _seconds(seg.start), _seconds(seg.end)
            seg_id = f"{mix_id}_{seg.start // MS:06d}_{seg.end // MS:06d}"
            lines["segments"].append(f"{seg_id} {mix_id} {start} {end}")
            lines["utt2spk"].append(f"{seg_id} {seg.speaker}")
            lines["rttm"].append(f"SPEAKER\t{mix_id}\t1\t{start}\t{round(end - start, 3)}\t<NA>\t<NA>\t{seg.speaker}\t<NA>")
            spk2utt.setdefault(seg.speaker, []).append(mix_id)
        lines["reco2dur"].append(f"{mix_id} {samples / SAMPLE_RATE}")
    lines["spk2utt"] = [f"{spk} {' '.join(mixes)}" for spk, mixes in spk2utt.items()]
    target.mkdir(parents=True, exist_ok=True)
    for name, content in lines.items():
        (target / name).write_text("".join(f"{line}\n" for line in content))


def make_libri2mix_sd(root: str | Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write the corpus under ``root``; returns ``root/data`` (what ``$LIBRI2MIX_SD_DATA`` names).

    ``root/Libri2Mix/wav16k/max/<split>/mix_both/<mix_id>.wav`` (16-bit PCM)
    and ``root/data/{train,dev,test}/`` with the files of ``KALDI_FILES``.
    ``sizes``: recordings per split (default train 8, dev 2, test 2).
    """
    import soundfile as sf

    root = Path(root).resolve()
    sizes = {"train": 8, "dev": 2, "test": 2, **(sizes or {})}
    rng, cache = np.random.default_rng(seed), {}
    for split, count in sizes.items():
        wav_dir = root / "Libri2Mix" / "wav16k" / "max" / SPLIT_DIRS[split] / "mix_both"
        wav_dir.mkdir(parents=True, exist_ok=True)
        recordings = []
        while len(recordings) < count:
            mix, segments, mix_id = make_mixture(rng, split, cache)
            if any(mix_id == r[0] for r in recordings) or min(solo_seconds(segments).values()) < MIN_SOLO:
                continue  # redraw: a repeated id, or a speaker (almost) never alone
            path = wav_dir / f"{mix_id}.wav"
            sf.write(str(path), mix, SAMPLE_RATE, subtype="PCM_16")
            recordings.append((mix_id, path, len(mix), segments))
        write_kaldi_dir(root / "data" / split, recordings)
    return root / "data"


def read_rttm(path: str | Path) -> list[tuple[str, float, float, str]]:
    """(recording, start, duration, speaker) of each line of an RTTM file."""
    rows = []
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "SPEAKER":
            rows.append((fields[1], float(fields[3]), float(fields[4]), fields[7]))
    return rows
