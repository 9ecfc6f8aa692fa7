"""Layer analysis: CKA and SVCCA invariances, and the per-layer table on constructed cases."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_

from pruned_upstream import export, make_prunable, save_model
from pruned_upstream.analysis.layer_report import INIT_STD, layer_analysis, reinit_layer_
from pruned_upstream.analysis.similarity import cka_matrix, linear_cka, svcca
from pruned_upstream.cli import main
from pruned_upstream.data.audio import write_wav
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.prunable import PruneConfig, gates

G = torch.Generator().manual_seed(0)
X = torch.randn(400, 16, generator=G, dtype=torch.float64)
Y = torch.randn(400, 12, generator=G, dtype=torch.float64)
IDENTITY = (1, 3)
WAV = torch.randn(2, 6000, generator=torch.Generator().manual_seed(4))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# ---------------------------------------------------------------------------- CKA
def test_cka_invariances():
    mixed = X[:, :12] + 0.5 * Y  # (N, 12), partly related to X
    base = linear_cka(X, mixed)
    assert 0.2 < base < 0.95
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X @ orthogonal(16, 1)) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, mixed @ orthogonal(12, 2)) == pytest.approx(base, abs=1e-12)  # rotate one side
    assert linear_cka(3.7 * X, mixed) == pytest.approx(base, abs=1e-12)  # isotropic scaling
    assert linear_cka(X + 5.0, mixed) == pytest.approx(base, abs=1e-12)  # centred
    assert linear_cka(mixed, X) == pytest.approx(base, abs=1e-12)
    stretch = torch.diag(torch.logspace(0, 2, 16, dtype=torch.float64))
    assert linear_cka(X, X @ stretch) < 0.9  # not invariant to a general invertible map
    assert linear_cka(X, Y) < 0.1  # independent features
    torch.testing.assert_close(cka_matrix([X, mixed], [X, Y]), torch.tensor(
        [[1.0, linear_cka(X, Y)], [base, linear_cka(mixed, Y)]], dtype=torch.float64))
    with pytest.raises(ValueError, match="400 vs 399"):
        linear_cka(X, X[:-1])


def test_svcca_sanity():
    stretch = torch.diag(torch.logspace(0, 1, 16, dtype=torch.float64)) @ orthogonal(16, 3)
    assert svcca(X, X @ stretch, keep=1.0) == pytest.approx(1.0, abs=1e-9)  # any invertible map
    assert svcca(X, Y, keep=1.0) < 0.25
    # a 3-dimensional signal embedded in 16 dims, with small independent noise on each side:
    def randn(*shape):
        return torch.randn(*shape, generator=G, dtype=torch.float64)

    signal = randn(400, 3)
    a = signal @ randn(3, 16) + 1e-3 * randn(400, 16)
    b = signal @ randn(3, 16) + 1e-3 * randn(400, 16)
    assert svcca(a, b, keep=0.99) > 0.999  # the SVD step keeps the signal, drops the noise
    assert svcca(a, b, keep=1.0) < 0.5  # plain CCA averages in the noise directions
    with pytest.raises(ValueError, match="keep"):
        svcca(a, b, keep=0.0)


# ---------------------------------------------------------------------------- re-initialisation
def test_reinit_draws_the_initial_distribution_and_spares_gates():
    model = make_prunable(randomize_(WavLM(tiny_arch(num_layers=2, embed_dim=64, ffn_dim=256)), 0.3), PruneConfig())
    layer = model.encoder.layers[0]
    bias = layer.self_attn.relative_attention_bias.weight.clone()
    log_alpha = layer.gate_int.log_alpha.clone()
    reinit_layer_(layer, seed=5)
    assert torch.equal(layer.self_attn.relative_attention_bias.weight, bias)
    assert torch.equal(layer.gate_int.log_alpha, log_alpha)
    w = torch.cat([layer.fc1.weight.flatten(), layer.fc2.weight.flatten(), layer.self_attn.q_proj.weight.flatten()]).detach()
    assert abs(float(w.std()) - INIT_STD) < 0.02 * INIT_STD and abs(float(w.mean())) < 0.02 * INIT_STD
    assert float(layer.fc2.bias.detach().abs().max()) == 0.0 and float(layer.self_attn.grep_a.detach().min()) == 1.0
    assert torch.equal(layer.final_layer_norm.weight, torch.ones(64))
    again = reinit_layer_(randomize_(model.encoder.layers[1], 0.3), seed=5)  # same seed, same draws
    assert torch.equal(again.fc1.weight, layer.fc1.weight)


# ---------------------------------------------------------------------------- per-layer table
def gated_identity_student() -> WavLM:
    """A pre-LN student whose layers 1 and 3 (the last) have both block gates at 0: identities."""
    torch.manual_seed(0)
    model = randomize_(WavLM(tiny_arch(num_layers=4, layer_norm_first=True, extractor_mode="layer_norm")), 0.2)
    student = make_prunable(model, PruneConfig()).eval()
    with torch.no_grad():
        for i in IDENTITY:
            for name in (f"encoder.layers.{i}.self_attn.gate_mha", f"encoder.layers.{i}.gate_ffn"):
                gates(student)[name].log_alpha.fill_(-10.0)
    return student


@pytest.mark.parametrize("exported", [False, True])
def test_identity_layer_has_cka_one_and_no_effect(exported):
    student = gated_identity_student()
    model = export(student) if exported else student  # exported: layers 1 and 3 have no block at all
    if exported:
        assert [layer.attn or layer.ffn for layer in model.arch.layers] == [True, False, True, False]
    result = layer_analysis(model, [WAV[0], WAV[1, :5000]], teacher=model, use_svcca=True)
    rows = result["rows"]
    for i in IDENTITY:  # the last one's output is read before the final LayerNorm
        assert rows[i]["cka_in_out"] == pytest.approx(1.0, abs=1e-9)
        assert rows[i]["svcca_in_out"] == pytest.approx(1.0, abs=1e-6)
        assert rows[i]["drop_rel_l2"] < 1e-6 and rows[i]["reinit_rel_l2"] < 1e-6
    for i in (0, 2):  # the other layers do something: the assertions above could fail
        assert rows[i]["cka_in_out"] < 0.9999 and rows[i]["drop_rel_l2"] > 1e-2 and rows[i]["reinit_rel_l2"] > 1e-2
    self_cka = torch.tensor(result["student_self"], dtype=torch.float64)
    assert self_cka[1, 2] == pytest.approx(1.0, abs=1e-9)  # identical states
    assert self_cka[3, 4] < 0.9999  # state 4 is state 3 after the final LayerNorm
    teacher = torch.tensor(result["student_teacher"], dtype=torch.float64)  # the model against itself
    torch.testing.assert_close(teacher.diagonal(), torch.ones(5, dtype=torch.float64))
    assert [r["closest_teacher_state"] for r in rows] in ([1, 1, 3, 4], [1, 2, 3, 4])  # states 1 and 2 tie


def test_analyze_command_writes_the_report(tmp_path):
    model = randomize_(WavLM(tiny_arch(num_layers=3, layer_norm_first=True, extractor_mode="layer_norm")), 0.2)
    save_model(model.eval(), tmp_path / "m.safetensors")
    audio = tmp_path / "wavs"
    audio.mkdir()
    for i in range(2):
        write_wav(audio / f"{i}.wav", 0.1 * torch.randn(5000, generator=torch.Generator().manual_seed(i)))
    out = tmp_path / "report"
    ckpt = str(tmp_path / "m.safetensors")
    assert main(["analyze", ckpt, "--audio", str(audio), "--teacher", ckpt, "--out", str(out), "--svcca"]) == 0
    table = (out / "layers.md").read_text()
    assert "| layer | CKA(in, out) | SVCCA(in, out) | drop: rel. L2 | re-init: rel. L2 | closest teacher state" in table
    assert sum(line.startswith("| 2 |") for line in table.splitlines()) == 1
    blob = json.loads((out / "analysis.json").read_text())
    assert blob["utterances"] == 2 and len(blob["rows"]) == 3 and len(blob["student_teacher"]) == 4
    for png in ("cka_student.png", "cka_student_teacher.png", "layer_effects.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
