"""Layers on demand: run-time drop == exported shallower model, the shared position bias, layer choice."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import randomize_

from pruned_upstream import export, load_model, make_prunable, save_model
from pruned_upstream.arch import LayerArch
from pruned_upstream.commands.export import export_command
from pruned_upstream.analysis.layer_choice import (
    choose_layers,
    compare_drop_strategies,
    comparison_markdown,
    drop_layers,
    layer_importance,
)
from pruned_upstream.analysis.probes import hidden_states
from pruned_upstream.model.depth import parse_spec, top_layers, uniform_layers
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.prunable import PruneConfig, gates

WAV = torch.randn(2, 6000, generator=torch.Generator().manual_seed(3))
LENGTHS = torch.tensor([6000, 4700])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend with the other tests
    yield
    torch.set_num_threads(previous)


def tiny(pre_ln: bool = True, layers: int = 4, seed: int = 0, ffn_dims=None) -> WavLM:
    """A randomised tiny WavLM; `ffn_dims` gives each layer its own FFN size (to tell layers apart)."""
    torch.manual_seed(seed)
    arch = tiny_arch(num_layers=layers, layer_norm_first=pre_ln, extractor_mode="layer_norm" if pre_ln else "default")
    if ffn_dims is not None:
        arch = dataclasses.replace(arch, layers=tuple(LayerArch.dense(4, 8, f) for f in ffn_dims))
    return randomize_(WavLM(arch), scale=0.2, seed=seed).eval()


def make_identity_(layer) -> None:
    """Zero the output projections of a pre-LN layer: x + 0 + 0, an exact identity."""
    with torch.no_grad():
        for lin in (layer.self_attn.out_proj, layer.fc2):
            lin.weight.zero_()
            lin.bias.zero_()


def run(model, wav=WAV, lengths=LENGTHS):
    with torch.no_grad():
        return model(wav, lengths)


# ---------------------------------------------------------------------------- run time == exported
@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("spec", [[0, 2], "top:1", "uniform:2", "1"])
def test_runtime_drop_equals_exported_model(tmp_path, pre_ln, spec):
    path = tmp_path / "full.safetensors"
    save_model(tiny(pre_ln), path)
    at_run_time = load_model(path, drop_layers=spec)
    assert export_command(str(path), str(tmp_path / "shallow.safetensors"), drop_layers=spec) == 0
    exported = load_model(tmp_path / "shallow.safetensors")
    assert exported.arch == at_run_time.arch
    a, b = run(at_run_time), run(exported)
    kept = 4 - len(choose_layers(load_model(path), spec))
    assert len(a) == len(b) == kept + 1
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("yaml_spec, spec, kept", [("[0, 2]", [0, 2], 2), ("top:1", "top:1", 3)])
def test_s3prl_upstream_drops_layers_from_its_model_config(tmp_path, yaml_spec, spec, kept):
    from pruned_upstream.s3prl_plugin.hubconf import pruned_wavlm_local

    path = tmp_path / "m.safetensors"
    save_model(tiny(), path)
    config = tmp_path / "upstream.yaml"
    config.write_text(f"drop_layers: {yaml_spec}\n")
    upstream = pruned_wavlm_local(str(path), model_config=str(config)).eval()
    direct = load_model(path, drop_layers=spec)
    with torch.no_grad():
        first = upstream([WAV[0], WAV[1, :4700]])["hidden_states"]
        second = upstream([WAV[1, :3000]])["hidden_states"]
    assert len(first) == len(second) == kept + 1
    for a, b in zip(first, run(direct)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    alone = run(direct, WAV[1:, :3000], torch.tensor([3000]))  # the second call, one utterance
    for a, b in zip(second, alone):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(second[-1], first[-1][1:, : second[-1].shape[1]], atol=1e-3)  # other audio


def test_dropping_layer_zero_hands_its_position_embedding_on():
    """Layers 1..3 of the full model, fed by hand with layer 0's position bias, == the shallow model."""
    full = tiny(pre_ln=True)
    shallow = drop_layers(full, [0])
    old, new = full.encoder.layers[0].self_attn, shallow.encoder.layers[0].self_attn
    assert new.has_relative_bias
    assert torch.equal(new.relative_attention_bias.weight, old.relative_attention_bias.weight)
    with torch.no_grad():
        x = full(WAV[:1])[0]  # (1, T, D): the input of layer 0
        bias = old.compute_bias(x.shape[1])  # (H, T, T)
        with_bias, without = x, x
        for layer in full.encoder.layers[1:]:
            with_bias, _ = layer(with_bias, None, bias)
            without, _ = layer(without, None, None)
        expected, unbiased = full.encoder.layer_norm(with_bias), full.encoder.layer_norm(without)
        got = shallow(WAV[:1])[-1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - unbiased).abs().max() > 1e-3  # the bias matters here: the test could fail


def test_hidden_states_follow_the_kept_layers():
    full = tiny(ffn_dims=(16, 24, 32, 40))
    for spec, kept_ffn in [([1, 2], (16, 40)), ("top:3", (16,)), ("uniform:2", (24, 40)), ("0,3", (24, 32))]:
        shallow = drop_layers(full, spec)
        assert tuple(layer.ffn_dim for layer in shallow.arch.layers) == kept_ffn
        assert len(run(shallow)) == len(kept_ffn) + 1
        assert type(shallow) is WavLM and shallow.training is False
    assert full.num_layers == 4  # the input model is untouched


def test_drop_keeps_mode_and_leaves_the_input_alone():
    full = tiny().train()
    before = {k: v.clone() for k, v in full.state_dict().items()}
    shallow = drop_layers(full, [2])
    assert shallow.training and full.num_layers == 4
    for k, v in full.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert drop_layers(full, []) is full


# ---------------------------------------------------------------------------- specs
def test_top_and_uniform():
    assert top_layers(12, 4) == [8, 9, 10, 11]
    # [YehChiang] (docs/references.md): "dropping layer 2, 5, 8, 11, 14, 17" of 18 layers, numbered from 1
    assert uniform_layers(18, 6) == [1, 4, 7, 10, 13, 16]
    assert uniform_layers(12, 4) == [1, 4, 7, 10]
    assert uniform_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    for n in range(2, 25):
        for k in range(1, n):
            got = uniform_layers(n, k)
            assert len(set(got)) == k and got == sorted(got) and 0 <= got[0] and got[-1] < n
            gaps = [b - a for a, b in zip(got, got[1:])]
            assert not gaps or max(gaps) - min(gaps) <= 1, (n, k, got)  # evenly spread


def test_bad_specs_are_named():
    assert parse_spec("3, 1", 4) == [1, 3]
    assert parse_spec(" uniform:2 ", 4) == ("uniform", 2)
    assert parse_spec(2, 4) == [2]
    for bad, message in [
        ([4], "out of range"),
        ([-1], "out of range"),
        ([1, 1], "repeats"),
        ("0,1,2,3", "drops all 4"),
        ("middle:2", "bad layer spec"),
        ("top:0", "K=0"),
        ("top:4", "K=4"),
        ("1;2", "bad layer spec"),
        ([True], "bad layer spec"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_spec(bad, 4)


def test_importance_without_audio_says_what_it_needs(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny(), path)
    with pytest.raises(ValueError, match="importance:2 needs a sample of audio"):
        load_model(path, drop_layers="importance:2")


# ---------------------------------------------------------------------------- choice on constructed cases
def test_importance_chooses_identity_layers_first():
    model = tiny(seed=1)
    for i in (1, 3):
        make_identity_(model.encoder.layers[i])
    audio = [WAV[0], WAV[1, :4700]]
    scores = layer_importance(model, audio)
    assert scores[1] < 1e-6 and scores[3] < 1e-6
    assert min(scores[0], scores[2]) > 1e-2
    assert choose_layers(model, "importance:2", audio) == [1, 3]
    assert choose_layers(model, "importance:1", audio) == [1]  # ties go to the lower index
    shallow = drop_layers(model, "importance:2", audio=audio)
    torch.testing.assert_close(run(shallow)[-1], run(model)[-1], rtol=1e-5, atol=1e-6)


def test_compare_drop_strategies():
    model = tiny(seed=2, layers=6)
    make_identity_(model.encoder.layers[4])
    rows = compare_drop_strategies(model, WAV, fractions=(1 / 6, 1 / 2))
    assert [(r["k"], r["strategy"]) for r in rows] == [
        (k, s) for k in (1, 3) for s in ("top", "uniform", "importance")
    ]
    by = {(r["k"], r["strategy"]): r for r in rows}
    assert by[1, "top"]["dropped"] == [5] and by[3, "uniform"]["dropped"] == [0, 2, 4]
    assert by[1, "importance"]["dropped"] == [4] and by[1, "importance"]["rel_l2"] < 1e-6
    assert by[1, "top"]["rel_l2"] > 1e-2 and 0 < by[3, "top"]["one_minus_cka"] < 1
    table = comparison_markdown(rows)
    assert table.count("\n") == 2 + len(rows) and "| importance | 4 |" in table


# ---------------------------------------------------------------------------- gates and a shallower model
def test_pruning_gates_on_a_shallower_model():
    """Drop layers, then attach gates (one config); export agrees with the gated student."""
    shallow = drop_layers(tiny(), "uniform:2")
    student = make_prunable(shallow, PruneConfig()).eval()
    assert len([n for n in gates(student) if n.endswith("gate_mha")]) == 2
    with torch.no_grad():
        gates(student)["encoder.layers.1.self_attn.gate_vo"].log_alpha[0].fill_(-10.0)  # one head off
    compact = export(student)
    assert [len(layer.heads) for layer in compact.arch.layers] == [4, 3]
    for a, b in zip(run(compact), run(student)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gates_travel_with_their_layers():
    student = make_prunable(tiny(), PruneConfig()).eval()
    with torch.no_grad():
        for name in ("encoder.layers.1.self_attn.gate_mha", "encoder.layers.1.gate_ffn"):
            gates(student)[name].log_alpha.fill_(-10.0)  # layer 1 gated to an identity
        gates(student)["encoder.layers.3.gate_int"].log_alpha[:5].fill_(-10.0)
    shallow = drop_layers(student, [1])
    assert torch.equal(
        gates(shallow)["encoder.layers.2.gate_int"].log_alpha, gates(student)["encoder.layers.3.gate_int"].log_alpha
    )
    assert len(gates(shallow)) == len(gates(student)) - 5
    torch.testing.assert_close(hidden_states(shallow, WAV)[-1], hidden_states(student, WAV)[-1], rtol=1e-5, atol=1e-6)
