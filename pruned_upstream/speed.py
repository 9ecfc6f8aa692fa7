"""Speed of models on the same audio: forward times, alternated so that a slow moment hits all alike.

    measure_speeds([model, ref], 10.0, repeats=5, threads=2)   # median seconds of each
"""

from __future__ import annotations

import statistics
import time

import torch

from .arch import SAMPLE_RATE
from .model.wavlm import WavLM

def count_params(model: torch.nn.Module) -> int:
    """Parameters of the model as s3prl counts them (every tensor of the module, gates excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("log_alpha"))


def measure_times(models: list, seconds: float, repeats: int, threads: int, device: str = "cpu") -> list[list[float]]:
    """Forward times (s) of each model on `seconds` of random audio, batch 1, `repeats` each.

    One warm-up forward per model is excluded; the repeats alternate between the
    models so that a slow moment of the machine hits them all alike.
    """
    if repeats < 1 or seconds <= 0 or threads < 1:
        raise ValueError(f"need repeats >= 1, seconds > 0, threads >= 1; got {repeats}, {seconds}, {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        wav = torch.randn(1, int(round(seconds * SAMPLE_RATE)), generator=g).to(device)
        models = [m.eval().to(device) for m in models]
        for m in models:
            _forward_time(m, wav)
        times = [[] for _ in models]
        for _ in range(repeats):
            for m, t in zip(models, times):
                t.append(_forward_time(m, wav))
        return times
    finally:
        torch.set_num_threads(previous)


def measure_speeds(models: list, seconds: float, repeats: int, threads: int, device: str = "cpu") -> list[float]:
    """Median forward seconds of each model (measure_times)."""
    return [statistics.median(t) for t in measure_times(models, seconds, repeats, threads, device)]


def measure_speed(model, seconds: float, repeats: int, threads: int, device: str = "cpu") -> float:
    """Median seconds of one forward over `seconds` of audio (see measure_speeds)."""
    return measure_speeds([model], seconds, repeats, threads, device)[0]


def _forward_time(model, wav: torch.Tensor) -> float:
    cuda = wav.device.type == "cuda"
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(wav.device)
        start = time.perf_counter()
        model(wav)
        if cuda:
            torch.cuda.synchronize(wav.device)
    return time.perf_counter() - start


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
