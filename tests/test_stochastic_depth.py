"""Stochastic depth: layers skipped at their probability in training, never in evaluation."""

from __future__ import annotations

import pytest
import torch

from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.components import layer_drop_probs


def _skipped(states) -> list[bool]:
    return [torch.equal(a, b) for a, b in zip(states[:-1], states[1:])]


def test_schedules():
    assert layer_drop_probs(0.2, 4) == [0.2] * 4
    assert layer_drop_probs(0.4, 4, "linear") == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError):
        layer_drop_probs(1.0, 4)
    with pytest.raises(ValueError):
        layer_drop_probs(0.1, 4, "cosine")


def test_skip_frequency_matches_the_probability():
    torch.manual_seed(0)
    model = WavLM(tiny_arch(num_layers=4))  # post-LN: a skipped last layer leaves the output unchanged
    probs = layer_drop_probs(0.6, 4, "linear")  # 0.15, 0.3, 0.45, 0.6
    model.encoder.layer_drop = probs
    model.train()
    wav = torch.randn(1, 1600)
    n = 400
    counts = torch.zeros(4)
    with torch.no_grad():
        for _ in range(n):
            counts += torch.tensor(_skipped(model(wav)), dtype=torch.float)
    for freq, p in zip(counts / n, probs):
        assert abs(float(freq) - p) < 4 * (p * (1 - p) / n) ** 0.5  # 4 standard errors
    model.eval()
    with torch.no_grad():
        assert not any(_skipped(model(wav)))  # never in evaluation mode


def test_skipping_layer_zero_keeps_the_position_bias_for_the_rest():
    torch.manual_seed(1)
    model = WavLM(tiny_arch(num_layers=3)).train()
    model.encoder.layer_drop = [0.999, 0.0, 0.0]
    wav = torch.randn(1, 3200)
    with torch.no_grad():
        states = model(wav)
        assert _skipped(states) == [True, False, False]
        # the same as running layers 1 and 2 by hand, with the bias layer 0 would have made
        layer0 = model.encoder.layers[0].self_attn
        bias = layer0.compute_bias(states[0].shape[1])
        x, _ = model.encoder.layers[1](states[0], None, bias)
    assert torch.allclose(x, states[2])
    assert len(states) == 4
