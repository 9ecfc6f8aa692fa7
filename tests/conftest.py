"""Shared fixtures: tiny WavLM checkpoints built with the reference implementations."""

from __future__ import annotations

import pytest
import torch

TINY_CONV = "[(32,10,5)] + [(32,8,4)] + [(32,4,4)] + [(32,2,2)] * 2"  # 320x downsampling


def release_cfg(pre_ln=False, normalize=False, mode="default", layers=2, dim=32, heads=4, ffn=64, conv=TINY_CONV):
    """A small configuration in the original release's `cfg` format."""
    return dict(
        extractor_mode=mode,
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_ffn_embed_dim=ffn,
        encoder_attention_heads=heads,
        layer_norm_first=pre_ln,
        conv_feature_layers=conv,
        normalize=normalize,
        conv_pos=8,
        conv_pos_groups=4,
        relative_position_embedding=True,
        num_buckets=16,
        max_distance=40,
        gru_rel_pos=True,
        conv_bias=mode == "layer_norm",
    )


def randomize_(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so nothing hides behind an initial 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def s3prl_wavlm(cfg: dict, seed: int = 0):
    """s3prl's own WavLM class built from `cfg`, every parameter randomised."""
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    torch.manual_seed(seed)
    return randomize_(WavLM(WavLMConfig(cfg)), seed=seed).eval()


def save_release_checkpoint(path, cfg: dict, seed: int = 0):
    model = s3prl_wavlm(cfg, seed)
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.fixture(autouse=True)
def _restore_threads():
    """A test that runs a trainer (run.threads=1) leaves torch's thread count as it found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
