"""Speed of models on the same audio: forward times, alternated so that a slow moment hits all alike.

    measure_speeds([model, ref], 10.0, repeats=5, threads=2)   # median seconds of each
    measure_times([model, ref], 10.0, 7, 1, lengths=mixed_lengths(8, 10.0))   # a padded batch
    machine()                                                  # the CPU (and its vector unit) or GPU
"""

from __future__ import annotations

import platform
import statistics
import time

import torch

from .arch import SAMPLE_RATE
from .model.wavlm import WavLM

def count_params(model: torch.nn.Module) -> int:
    """Parameters of the model as s3prl counts them (every tensor of the module, gates excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("log_alpha"))


def mixed_lengths(batch: int, seconds: float) -> list[int]:
    """Samples of `batch` utterances spread evenly from 40 % to 100 % of `seconds` (a padded batch)."""
    if batch < 1 or seconds <= 0:
        raise ValueError(f"need batch >= 1 and seconds > 0, got {batch}, {seconds}")
    full = int(round(seconds * SAMPLE_RATE))
    if batch == 1:
        return [full]
    return [int(round(full * (0.4 + 0.6 * i / (batch - 1)))) for i in range(batch)]


def measure_times(models: list, seconds: float, repeats: int, threads: int, device: str = "cpu",
                  lengths: list[int] | None = None) -> list[list[float]]:
    """Forward times (s) of each model on `seconds` of random audio, `repeats` each.

    Batch 1, or with `lengths` one utterance per length, zero-padded to the longest
    (as s3prl sends a batch). One warm-up forward per model is excluded; the repeats
    alternate between the models so that a slow moment of the machine hits them all alike.
    """
    if repeats < 1 or seconds <= 0 or threads < 1:
        raise ValueError(f"need repeats >= 1, seconds > 0, threads >= 1; got {repeats}, {seconds}, {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        lengths = lengths or [int(round(seconds * SAMPLE_RATE))]
        wav = torch.randn(len(lengths), max(lengths), generator=g)
        for i, n in enumerate(lengths):
            wav[i, n:] = 0.0
        wav = wav.to(device)
        lens = torch.tensor(lengths, device=device) if len(set(lengths)) > 1 else None
        models = [m.eval().to(device) if isinstance(m, torch.nn.Module) else m for m in models]
        for m in models:
            _forward_time(m, wav, lens)
        times = [[] for _ in models]
        for _ in range(repeats):
            for m, t in zip(models, times):
                t.append(_forward_time(m, wav, lens))
        return times
    finally:
        torch.set_num_threads(previous)


def measure_speeds(models: list, seconds: float, repeats: int, threads: int, device: str = "cpu") -> list[float]:
    """Median forward seconds of each model (measure_times)."""
    return [statistics.median(t) for t in measure_times(models, seconds, repeats, threads, device)]


def measure_speed(model, seconds: float, repeats: int, threads: int, device: str = "cpu") -> float:
    """Median seconds of one forward over `seconds` of audio (see measure_speeds)."""
    return measure_speeds([model], seconds, repeats, threads, device)[0]


def _forward_time(model, wav: torch.Tensor, lengths=None) -> float:
    cuda = wav.device.type == "cuda"
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(wav.device)
        start = time.perf_counter()
        model(wav) if lengths is None else model(wav, lengths)
        if cuda:
            torch.cuda.synchronize(wav.device)
    return time.perf_counter() - start


def machine(device: str = "cpu") -> dict:
    """What a timing ran on: the CPU's model name and the vector unit torch's kernels use
    (`torch.backends.cpu.get_cpu_capability`: AVX512, AVX2, ...), or the GPU's name."""
    info = {"cpu": cpu_name(), "vector": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def profile_ops(model, seconds: float, threads: int, rows: int = 12) -> str:
    """Torch profiler's table of the ops taking the most time in 3 forwards (after 2 warm-ups), batch 1."""
    from torch.profiler import ProfilerActivity, profile

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wav = torch.randn(1, int(round(seconds * SAMPLE_RATE)), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            model(wav), model(wav)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    model(wav)
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    finally:
        torch.set_num_threads(previous)


def loader_rate(source, crop: int, batch_size: int, workers: int, batches: int, seed: int = 0) -> dict:
    """Utterances per second the training data pipeline delivers (trainer.build_data's parts).

    `source`: a directory or manifest; the dataset reads headers when built, then every item is
    decoded, resampled if needed and cropped by the DataLoader's workers. The first batch (worker
    start) is not timed; `batches` batches after it are, or the rest of the epoch if shorter.
    """
    from .data.dataset import AudioDataset, collate
    from .data.sampler import LengthBucketSampler

    dataset = AudioDataset(source, crop, min_samples=0, seed=seed, scan="header")
    sampler = LengthBucketSampler(dataset.lengths, batch_size, None, seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
    it = iter(loader)
    next(it)
    start, utterances, samples = time.perf_counter(), 0, 0
    for _, (wav, lengths) in zip(range(batches), it):
        utterances, samples = utterances + wav.shape[0], samples + int(lengths.sum())
    seconds = time.perf_counter() - start
    return {"utterances_per_s": utterances / seconds, "audio_s_per_s": samples / SAMPLE_RATE / seconds,
            "utterances": utterances, "seconds": seconds, "workers": workers, "batch_size": batch_size}


# ---------------------------------------------------------------------------- against s3prl
def compare_with_s3prl(seconds: float = 10.0, repeats: int = 5, threads: int = 2) -> dict:
    """Dense WavLM Base: ours vs s3prl's WavLM, the same random weights (docs/performance.md).

    s3prl's model is called as its `wavlm` upstream calls it: extract_features
    with an all-False padding mask. Returns {name: {"median", "min"}} and the
    largest absolute difference of the last hidden state.
    """
    from s3prl.upstream.wavlm.WavLM import WavLM as S3prlWavLM
    from s3prl.upstream.wavlm.WavLM import WavLMConfig

    from .arch import preset

    torch.manual_seed(0)
    ours = WavLM(preset("base")).eval()
    theirs = S3prlWavLM(WavLMConfig(dict(relative_position_embedding=True, gru_rel_pos=True, max_distance=800)))
    theirs.load_state_dict(ours.state_dict())  # our keys are the release's
    variants = {"ours": ours, "s3prl": _S3prlCall(theirs)}
    wav = torch.randn(1, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = float((ours(wav)[-1] - variants["s3prl"](wav)).abs().max())
    result = _timing_table(variants, seconds, repeats, threads)
    result["max_abs_diff"] = diff
    return result


class _S3prlCall(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, wav):  # (B, S) -> last hidden state (B, T, D)
        pad = torch.zeros(wav.shape, dtype=torch.bool, device=wav.device)
        return self.model.extract_features(wav, padding_mask=pad, mask=False)[0]


def _timing_table(variants: dict, seconds: float, repeats: int, threads: int) -> dict:
    times = measure_times(list(variants.values()), seconds, repeats, threads)
    return {name: {"median": statistics.median(t), "min": min(t)} for name, t in zip(variants, times)}
