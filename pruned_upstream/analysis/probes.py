"""Measurements on audio: hidden states over a sample, and how much a change moves them.

Distortion (`distortion`): the relative L2 change of the final hidden states,
||H' - H||_F / ||H||_F over every frame of every utterance of a sample.
Utterances run one at a time (no padding), in evaluation mode.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from ..model.depth import remove_layers
from ..arch import SAMPLE_RATE
from ..model.wavlm import WavLM

log = logging.getLogger(__name__)


def as_utterances(audio) -> list[torch.Tensor]:
    """A (S,) or (B, S) tensor, or a list of 1-D waveforms -> a list of (S_i,) float tensors."""
    if audio is None:
        raise ValueError("no audio given")
    if isinstance(audio, torch.Tensor):
        if audio.dim() not in (1, 2):
            raise ValueError(f"audio must be (samples,) or (batch, samples), got shape {tuple(audio.shape)}")
        audio = [audio] if audio.dim() == 1 else list(audio)
    utts = [torch.as_tensor(a, dtype=torch.float32).reshape(-1) for a in audio]
    if not utts or any(u.numel() == 0 for u in utts):
        raise ValueError(f"audio must hold at least one non-empty waveform, got {len(utts)} waveform(s)")
    return utts


def load_audio_sample(audio_dir, max_files: int = 16, max_seconds: float = 8.0) -> list[torch.Tensor]:
    """The first `max_files` readable files under `audio_dir` (sorted), each cut to `max_seconds`.

    Unusable files (see audio.REASONS) are skipped with a warning.
    """
    from ..data.audio import AudioError, read_audio
    from ..data.manifest import find_audio

    limit = int(max_seconds * SAMPLE_RATE)
    utts = []
    for path in find_audio(audio_dir):
        if len(utts) == max_files:
            break
        try:
            utts.append(read_audio(path)[:limit])
        except AudioError as err:
            log.warning("skipped %s", err)
    if not utts:
        raise ValueError(f"no readable audio under {audio_dir}")
    return utts


@contextmanager
def _evaluating(model: torch.nn.Module):
    """Evaluation mode (deterministic gates) without gradients, the previous mode restored after."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(training)


def hidden_states(model: WavLM, audio, last_only: bool = False) -> list[torch.Tensor]:
    """Every hidden state (or only the final one) over the sample, each (N, D), N = all frames.

    Utterances run one at a time (no padding), in evaluation mode.
    """
    device = model.mask_emb.device
    per_utt = []
    with _evaluating(model):
        for wav in as_utterances(audio):
            states = model(wav.to(device)[None])  # list of (1, T_i, D)
            per_utt.append([h[0] for h in (states[-1:] if last_only else states)])
    return [torch.cat(layer) for layer in zip(*per_utt)]  # each (N, D)


def final_state(model: WavLM, audio) -> torch.Tensor:
    """The final hidden state over the sample, (N, D)."""
    return hidden_states(model, audio, last_only=True)[0]


def relative_l2(new: torch.Tensor, ref: torch.Tensor) -> float:
    """||new - ref||_F / ||ref||_F, in float64."""
    if new.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(new.shape)} vs {tuple(ref.shape)}")
    ref = ref.double()
    return float((new.double() - ref).norm() / ref.norm().clamp(min=1e-30))


def distortion(model: WavLM, drop, audio, reference: torch.Tensor | None = None) -> float:
    """Relative L2 change of the final hidden states when the layers `drop` are removed."""
    if reference is None:
        reference = final_state(model, audio)
    return relative_l2(final_state(remove_layers(model, sorted(drop)), audio), reference)
