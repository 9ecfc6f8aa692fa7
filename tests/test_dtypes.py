"""Every dtype runs every path and agrees with float32 within its own precision (issue 19).

float64, bfloat16 and float16 models (`model.to(dtype)`) against the same model in
float32: dense, uneven heads, gated student in eval and train mode, exported compact
model, HuBERT and wav2vec 2.0 layouts, Large's layout (LayerNorm CNN, normalised audio,
pre-LN); batch 1 and a padded batch; under no_grad (the inference path: the first CNN
layer as a matmul, its first layers in time slices, the attention's inference path) and
with a gradient
(the layers as written, and a backward). The audio is float32, as s3prl hands it over.

Tolerance, relative error of the last hidden state (||out - ref|| / ||ref||):
- float64: 1e-5. Both sides are exact to float32 rounding (2^-24 = 6e-8 relative per
  operation); measured 3e-7 to 7e-7.
- bfloat16: 5e-2. Its 8-bit significand rounds each value to 2^-9 = 2e-3 relative, and
  a forward chains some twenty roundings (CNN, projections, softmax, norms); measured
  0.9e-2 to 1.7e-2 on these random models, so 5e-2 leaves 3x and still fails a
  wrong path (a dropped norm or gate is off by O(1)).
- float16: 1e-2 (10-bit significand, 2^-11 = 5e-4; measured 1.1e-3 to 2.1e-3).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pruned_upstream.arch import HeadArch, LayerArch
from pruned_upstream.exporting import export
from pruned_upstream.model import hardconcrete
from pruned_upstream.model.attention import SelfAttention
from pruned_upstream.model.components import ConvBlock
from pruned_upstream.model.prunable import PruneConfig, make_prunable
from pruned_upstream.model.wavlm import WavLM, tiny_arch

TOLERANCE = {torch.float64: 1e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}
KINDS = ("dense", "uneven", "gated_eval", "gated_train", "exported", "hubert", "wav2vec2", "large_like")
PLAIN = ("dense", "uneven", "exported", "hubert", "wav2vec2", "large_like")  # no gate attached
ALL_KINDS = ("mha", "qk", "vo", "ffn", "int", "conv")


def _uneven():
    layers = (LayerArch(heads=(HeadArch(0, 3, 5), HeadArch(2, 0, 8), HeadArch(3, 6, 2)), ffn_dim=20),
              LayerArch(heads=(HeadArch(1, 0, 4),), ffn_dim=0, ffn=False))
    return dataclasses.replace(tiny_arch(), layers=layers, conv_channels=(16, 20, 32, 8, 32))


def build(kind: str) -> WavLM:
    torch.manual_seed(0)
    archs = {"uneven": _uneven(),
             "hubert": dataclasses.replace(tiny_arch(), family="hubert", relative_position_embedding=False,
                                           gru_rel_pos=False),
             "wav2vec2": dataclasses.replace(tiny_arch(), family="wav2vec2", relative_position_embedding=False,
                                             gru_rel_pos=False),
             # Large's layout: a LayerNorm in every conv block, normalised audio, pre-LN layers
             "large_like": tiny_arch(extractor_mode="layer_norm", normalize=True, layer_norm_first=True,
                                     conv_bias=True)}
    model = WavLM(archs.get(kind) or tiny_arch())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    if kind in PLAIN and kind != "exported":
        return model.eval()
    make_prunable(model, PruneConfig(kinds=ALL_KINDS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("log_alpha"):
                p.normal_(1.0, 2.0)  # some gates closed, some open
    if kind == "exported":
        return export(model.eval()).eval()
    return model.train(kind == "gated_train")


@pytest.fixture
def fixed_gate_noise(monkeypatch):
    """Train-mode gates draw the same noise in every dtype (torch.rand's stream depends on the dtype)."""
    def forward(self):
        if not self.training:
            return hardconcrete.deterministic_mask(self.log_alpha)
        g = torch.Generator().manual_seed(self.log_alpha.numel())
        u = torch.rand(self.log_alpha.shape, generator=g).clamp(0.05, 0.95)
        return hardconcrete.sample_z(self.log_alpha, u=u.to(self.log_alpha.dtype), ste=self.ste)
    monkeypatch.setattr(hardconcrete.HardConcrete, "forward", forward)


def _audio(padded: bool):
    g = torch.Generator().manual_seed(3)
    if not padded:
        return torch.randn(1, 6000, generator=g) * 0.3, None
    return torch.randn(3, 6000, generator=g) * 0.3, torch.tensor([6000, 4100, 2300])


def _relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.detach().double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_every_dtype_runs_every_path_and_agrees_with_float32(kind, dtype, fixed_gate_noise, monkeypatch):
    calls = {"fused": 0, "stats": 0}
    for cls, name, key in ((SelfAttention, "_inference_output", "fused"), (ConvBlock, "normalised_frames", "stats")):
        real = getattr(cls, name)
        def spy(self, *a, _real=real, _key=key):
            calls[_key] += 1
            return _real(self, *a)
        monkeypatch.setattr(cls, name, spy)
    reference = build(kind)
    model = copy.deepcopy(reference).to(dtype)  # the float32 weights stay in `reference`
    for padded in (False, True):
        wav, lengths = _audio(padded)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                ref = reference(wav, lengths)[-1].detach()
            before = dict(calls)
            with torch.set_grad_enabled(grad):
                states = model(wav, lengths)
            out = states[-1]
            assert out.dtype == dtype and len(states) == model.num_layers + 1
            assert torch.isfinite(out).all()
            err = _relative(out, ref)
            assert err < TOLERANCE[dtype], (kind, dtype, padded, grad, err)
            if grad:  # a gradient reaches every parameter that took part, in the model's dtype
                out.float().square().mean().backward()
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                assert grads and all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)
                model.zero_grad(set_to_none=True)
            elif kind != "gated_train":
                # no gradient: the inference path ran in this dtype (the CNN's first layer as a
                # matmul where it has a GroupNorm; the attention's, where no gate is attached)
                if kind != "large_like":
                    assert calls["stats"] > before["stats"], (kind, dtype)
                if kind != "gated_eval":
                    assert calls["fused"] > before["fused"], (kind, dtype)


def test_float32_audio_into_a_bfloat16_model_is_cast_not_refused():
    """s3prl hands over float32 audio whatever the upstream's dtype: this was 'mixed dtype (CPU)'."""
    model = build("dense").to(torch.bfloat16)
    wav, lengths = _audio(True)
    with torch.no_grad():
        states = model(wav.double(), lengths)
    assert all(s.dtype == torch.bfloat16 for s in states)
