"""Masked student (eval) == exported compact model == its reloaded file, over many gate patterns."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err

from pruned_upstream import export, load_model, make_prunable, save_model
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.prunable import (
    PruneConfig,
    expected_sparsity,
    gates,
    kept_prunable,
    realised_sparsity,
    total_prunable,
)

ALL_KINDS = ("mha", "qk", "vo", "ffn", "int")
WAV = torch.randn(2, 7000, generator=torch.Generator().manual_seed(5))
LENGTHS = torch.tensor([7000, 5200])


def student(pre_ln: bool, seed: int, kinds=ALL_KINDS, layers=3):
    torch.manual_seed(seed)
    arch = tiny_arch(num_layers=layers, layer_norm_first=pre_ln, extractor_mode="layer_norm" if pre_ln else "default")
    model = WavLM(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return make_prunable(model, PruneConfig(kinds=kinds)).eval()


def set_log_alpha(model, name: str, values):
    gate = gates(model)[name]
    with torch.no_grad():
        gate.log_alpha.copy_(torch.as_tensor(values, dtype=torch.float).expand_as(gate.log_alpha))


def assert_equivalent(model, tmp_path):
    with torch.no_grad():
        expected = model(WAV, LENGTHS)
        compact = export(model)
        got = compact(WAV, LENGTHS)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert rel_err(a, b) < 1e-5
    save_model(compact, tmp_path / "m.safetensors")
    reloaded = load_model(tmp_path / "m.safetensors")
    with torch.no_grad():
        again = reloaded(WAV, LENGTHS)
    for a, b in zip(again, got):
        assert torch.equal(a, b)
    return compact


def implied_params(model) -> int:
    """Parameters the deterministic masks imply, counted from the masks alone, independently of export."""
    d = model.arch.embed_dim
    total = model.num_params()
    for layer in model.encoder.layers:
        a = layer.self_attn
        z_mha = a.gate_mha().item() if a.gate_mha is not None else 1.0
        z_qk = a.gate_qk() if a.gate_qk is not None else torch.ones(len(a.layer.heads), a.qk_width)
        z_vo = a.gate_vo() if a.gate_vo is not None else torch.ones(len(a.layer.heads), a.vo_width)
        if z_mha == 0:
            total -= a.q_proj.weight.numel() * 2 + a.v_proj.weight.numel() * 2  # W_Q, W_K, W_V, W_O
            total -= a.q_proj.bias.numel() * 2 + a.v_proj.bias.numel() + d  # their biases, b_O
            total -= sum(p.numel() for n, p in a.named_parameters() if "grep" in n)
            if layer.pre_ln:
                total -= 2 * d  # its LayerNorm
        else:
            total -= int((z_qk == 0).sum()) * (2 * d + 2) + int((z_vo == 0).sum()) * (2 * d + 1)
            dead_heads = int(((z_vo > 0).sum(1) == 0).sum())
            total -= dead_heads  # grep_a entries
        z_ffn = layer.gate_ffn().item() if layer.gate_ffn is not None else 1.0
        z_int = layer.gate_int() if layer.gate_int is not None else torch.ones(layer.fc1.out_features)
        if z_ffn == 0:
            total -= layer.fc1.weight.numel() * 2 + layer.fc1.bias.numel() + d + (2 * d if layer.pre_ln else 0)
        else:
            total -= int((z_int == 0).sum()) * (2 * d + 1)
    return total


def dead_qk_params(model) -> int:
    """qk dims kept by their masks in heads that lost every vo dim: export drops them too."""
    d, dead = model.arch.embed_dim, 0
    for layer in model.encoder.layers:
        a = layer.self_attn
        if a.gate_mha is not None and a.gate_mha().item() == 0:
            continue
        z_qk, z_vo = a.gate_qk(), a.gate_vo()
        for h in range(z_vo.shape[0]):
            if (z_vo[h] > 0).sum() == 0:
                dead += int((z_qk[h] > 0).sum()) * (2 * d + 2)
    return dead


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("seed", range(6))
def test_random_gate_patterns(tmp_path, pre_ln, seed):
    model = student(pre_ln, seed)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for gate in gates(model).values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=g) * 4)
    compact = assert_equivalent(model, tmp_path)
    assert compact.num_params() == implied_params(model) - dead_qk_params(model)


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post-LN", "pre-LN"])
def test_edge_cases(tmp_path, pre_ln):
    model = student(pre_ln, seed=7)
    L = model.encoder.layers
    # layer 0: attention gone (its relative position embedding still serves the others)
    set_log_alpha(model, "encoder.layers.0.self_attn.gate_mha", -10.0)
    # layer 1: head 0 without qk dims but with vo dims; head 1 with qk dims but no vo dims
    qk = torch.full(L[1].self_attn.gate_qk.log_alpha.shape, 6.0)
    vo = torch.full(L[1].self_attn.gate_vo.log_alpha.shape, 6.0)
    qk[0] = -10.0
    vo[1] = -10.0
    set_log_alpha(model, "encoder.layers.1.self_attn.gate_qk", qk)
    set_log_alpha(model, "encoder.layers.1.self_attn.gate_vo", vo)
    # layer 1: FFN gone; layer 2: every FFN unit gone but the block kept (its bias stays)
    set_log_alpha(model, "encoder.layers.1.gate_ffn", -10.0)
    set_log_alpha(model, "encoder.layers.2.gate_int", -10.0)
    compact = assert_equivalent(model, tmp_path)
    layers = compact.arch.layers
    assert not layers[0].attn and compact.encoder.layers[0].self_attn.has_relative_bias
    heads = {h.index: h for h in layers[1].heads}
    assert heads[0].qk == 0 and heads[0].vo > 0 and 1 not in heads
    assert not layers[1].ffn and layers[2].ffn and layers[2].ffn_dim == 0


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post-LN", "pre-LN"])
def test_every_block_gone(tmp_path, pre_ln):
    model = student(pre_ln, seed=8)
    for name in gates(model):
        if name.endswith(("gate_mha", "gate_ffn")):
            set_log_alpha(model, name, -10.0)
    compact = assert_equivalent(model, tmp_path)
    assert all(not l.attn and not l.ffn for l in compact.arch.layers)
    assert realised_sparsity(model) == 1.0


def test_all_qk_dims_of_a_layer_gone(tmp_path):
    model = student(False, seed=9)
    set_log_alpha(model, "encoder.layers.1.self_attn.gate_qk", -10.0)
    compact = assert_equivalent(model, tmp_path)
    assert all(h.qk == 0 for h in compact.arch.layers[1].heads)


def test_cnn_gates_export_exactly(tmp_path):
    model = student(False, seed=10, kinds=ALL_KINDS + ("conv",))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for gate in gates(model).values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=g) * 3 + 1)
    compact = assert_equivalent(model, tmp_path)
    assert compact.arch.conv_channels[-1] == model.arch.conv_layers[-1][0]  # the last conv stays whole
    assert sum(compact.arch.conv_channels[:-1]) < sum(c for c, _, _ in model.arch.conv_layers[:-1])


def test_deterministic_count_matches_export_on_prunable_part():
    model = student(False, seed=12)
    g = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for gate in gates(model).values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=g) * 4)
    kept = float(kept_prunable(model, "deterministic"))
    compact = export(model)
    d = model.arch.embed_dim
    exported = sum(
        (l.qk_total * (2 * d + 2) + l.vo_total * (2 * d + 1) if l.attn else 0) + (l.ffn_dim * (2 * d + 1) if l.ffn else 0)
        for l in compact.arch.layers
    )
    assert exported == kept - dead_qk_params(model)
    assert 0.0 < realised_sparsity(model) < 1.0


def test_expected_sparsity_is_differentiable_and_nested():
    model = student(False, seed=14)
    p_hat = expected_sparsity(model)
    p_hat.backward()
    assert all(g.log_alpha.grad is not None and g.log_alpha.grad.abs().sum() > 0 for g in gates(model).values())
    # closing a layer's attention gate removes its qk and vo dims from the expectation
    before = float(kept_prunable(model).detach())
    set_log_alpha(model, "encoder.layers.0.self_attn.gate_mha", -30.0)
    d = model.arch.embed_dim
    drop = 4 * 8 * (2 * d + 2) + 4 * 8 * (2 * d + 1)  # tiny: 4 heads x 8 dims
    assert before - float(kept_prunable(model).detach()) == pytest.approx(drop, rel=0.02)


def test_dense_model_prunable_count_base():
    from pruned_upstream.arch import preset

    model = make_prunable(WavLM(preset("base")))
    assert total_prunable(model) == 12 * (768 * 1538 + 768 * 1537 + 3072 * 1537)  # 85.0 M
    assert float(expected_sparsity(model).detach()) < 0.01  # the student starts as (nearly) the teacher
