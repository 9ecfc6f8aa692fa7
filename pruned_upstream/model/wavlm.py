"""WavLM: one module for the teacher, the prunable student and the exported model.

    model = WavLM(arch)
    hidden_states = model(wav, lengths)   # wav (B, S) float at 16 kHz -> list of (B, T', D)

The hidden states are s3prl's: the input of every transformer layer, then the
encoder's output (after the final LayerNorm for pre-LN models), with the values
s3prl's `wavlm` upstream gives for the same checkpoint and audio, padded batches
included: the CNN runs over the padded batch (Base's GroupNorm therefore sees
the padding) and frames are marked padded with s3prl's rule. HuBERT and wav2vec
2.0 are the same module without the position bias (`arch.family`; s3prl's
wav2vec2 finds padded frames with the CNN's length formula instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import WavLMArch, dense_arch, preset
from .components import Encoder, FeatureExtractor
from .dropout import scale_gradient



def frame_padding_mask(sample_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
    """s3prl's frame padding rule: (B, S) True at padded samples -> (B, T') True at padded frames.

    The trailing S mod T' samples are dropped, the rest cut into T' equal chunks,
    and a frame is padded when every sample of its chunk is.
    """
    b, s = sample_mask.shape
    extra = s % num_frames
    if extra:
        sample_mask = sample_mask[:, :-extra]
    return sample_mask.view(b, num_frames, -1).all(-1)


class WavLM(nn.Module):
    def __init__(self, arch: WavLMArch):
        super().__init__()
        self.arch = arch
        self.feature_extractor = FeatureExtractor(arch)
        self.layer_norm = nn.LayerNorm(arch.channels()[-1])
        if arch.post_extract_proj:
            self.post_extract_proj = nn.Linear(arch.channels()[-1], arch.embed_dim)
        else:
            self.post_extract_proj = None
        # Pre-training's mask embedding: unused at inference, kept so that the
        # release's checkpoints load strictly and parameter counts match s3prl's.
        self.mask_emb = nn.Parameter(torch.zeros(arch.embed_dim))
        self.encoder = Encoder(arch)
        # Fine-tuning semantics (model/dropout.py): the rates the file records (inactive until
        # dropout.apply_dropout), the active input dropout, and the CNN's gradient factor
        # (0: the CNN runs under no_grad, as in s3prl's experts; 1: trained, as in our pruning).
        self.dropout_rates: dict[str, float] = {}
        self.dropout_input = 0.0
        self.feature_grad_mult = 1.0

    @classmethod
    def from_preset(cls, name: str) -> "WavLM":
        return cls(preset(name))

    @property
    def num_layers(self) -> int:
        return self.arch.num_layers

    def num_params(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.endswith("log_alpha"))

    def prepare_wav(self, wav: torch.Tensor, lengths: torch.Tensor | None):
        """Zero the padding and layer-normalise each utterance when the checkpoint asks for it."""
        if wav.dim() != 2:
            raise ValueError(f"wav must be (batch, samples), got shape {tuple(wav.shape)}")
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
        lengths = torch.as_tensor(lengths, device=wav.device)
        if lengths.shape != (wav.shape[0],) or int(lengths.min()) < 1 or int(lengths.max()) > wav.shape[1]:
            raise ValueError(f"lengths must be ({wav.shape[0]},) in [1, {wav.shape[1]}], got {lengths.tolist()}")
        sample_mask = torch.arange(wav.shape[1], device=wav.device)[None, :] >= lengths[:, None]  # (B, S)
        padded = bool(sample_mask.any())
        if padded:
            wav = wav.masked_fill(sample_mask, 0.0)
        if self.arch.normalize:  # in float32 at least, whatever the model's dtype
            wav = wav.to(torch.promote_types(wav.dtype, torch.float32))
            wav = torch.stack(
                [F.pad(F.layer_norm(w[:n], (int(n),)), (0, wav.shape[1] - int(n))) for w, n in zip(wav, lengths)]
            )
        # in the model's dtype: s3prl hands float32 audio to a model that may be float64, bf16 or fp16
        return wav.to(self.layer_norm.weight.dtype), (sample_mask if padded else None)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """wav (B, S) float 16 kHz, lengths (B,) valid samples -> hidden states, each (B, T', D)."""
        wav, sample_mask = self.prepare_wav(wav, lengths)
        if self.feature_grad_mult == 0.0:  # s3prl's experts: no gradient reaches the CNN
            with torch.no_grad():
                features = self.feature_extractor(wav)
        else:
            features = scale_gradient(self.feature_extractor(wav), self.feature_grad_mult)
        features = features.transpose(1, 2)  # (B, C, T') -> (B, T', C)
        features = self.layer_norm(features)
        padding_mask = None
        if sample_mask is not None and self.arch.family == "wav2vec2":  # s3prl's wav2vec2: the CNN's length formula
            frames = self.output_lengths((~sample_mask).sum(1))
            padding_mask = torch.arange(features.shape[1], device=wav.device)[None, :] >= frames[:, None]
        elif sample_mask is not None:
            padding_mask = frame_padding_mask(sample_mask, features.shape[1])
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        if self.training and self.dropout_input > 0:
            features = F.dropout(features, self.dropout_input, training=True)
        return self.encoder(features, padding_mask)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced for `lengths` samples (the CNN's floor((L - k) / s) + 1 per layer)."""
        for _, kernel, stride in self.arch.conv_layers:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths


def tiny_arch(**kw) -> WavLMArch:
    """A small WavLM for tests and the demo: 5 conv layers of 32 channels (downsampling 320)."""
    conv = kw.pop("conv_layers", ((32, 10, 5), (32, 8, 4), (32, 4, 4), (32, 2, 2), (32, 2, 2)))
    args = dict(num_layers=2, embed_dim=32, num_heads=4, ffn_dim=64)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return dense_arch(conv_layers=conv, conv_pos=8, conv_pos_groups=4, num_buckets=16, max_distance=40, **args, **kw)
