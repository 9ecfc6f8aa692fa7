"""The magnitude-pruning baseline: the pruned model's counts, the largest structures, the dense weights unchanged.

Which structures stay is read back from the baseline itself (each of its rows found, bit for
bit, in the dense model), so the output check below does not trust the module's own plan.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import rel_err

from cli_child import assert_one_line_error, run_cli
from training_fixtures import tiny, write_manifest

from pruned_upstream import cli, export, load_model, make_prunable, save_model
from pruned_upstream.analysis.magnitude import magnitude_prune
from pruned_upstream.arch import HeadArch, LayerArch
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.prunable import PruneConfig, gates

KINDS = ("mha", "qk", "vo", "ffn", "int")
WAV = torch.randn(2, 7000, generator=torch.Generator().manual_seed(5))
LENGTHS = torch.tensor([7000, 5200])


def dense_model(pre_ln=False, seed=0, layers=3, **kw) -> WavLM:
    torch.manual_seed(seed)
    arch = tiny_arch(num_layers=layers, layer_norm_first=pre_ln, extractor_mode="layer_norm" if pre_ln else "default",
                     **kw)
    model = WavLM(arch).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def pruned_like(dense: WavLM, seed: int, conv: bool = False, scale: float = 3.0) -> WavLM:
    """A compact model of dense's shape, pruned by random gates (other weights: irrelevant here)."""
    student = make_prunable(WavLM(dense.arch), PruneConfig(kinds=KINDS + (("conv",) if conv else ()))).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gates(student).values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=g) * scale + 0.5)
    return export(student)


def counts(arch) -> tuple:
    layers = tuple((l.attn, sorted((h.qk, h.vo) for h in l.heads) if l.attn else [], l.ffn, l.ffn_dim if l.ffn else 0)
                   for l in arch.layers)
    return layers, arch.channels()


def found_rows(rows: torch.Tensor, dense: torch.Tensor) -> list[int]:
    """For each row of `rows`, the one row of `dense` equal to it bit for bit."""
    out = []
    for row in rows:
        hits = [i for i in range(len(dense)) if torch.equal(dense[i], row)]
        assert len(hits) == 1, hits
        out.append(hits[0])
    return out


def kept_structures(baseline: WavLM, dense: WavLM) -> dict:
    """Which dense rows each baseline weight is, checked bit for bit against every tensor that uses them."""
    kept = {"layers": [], "conv": []}
    for new, old, arch in zip(baseline.encoder.layers, dense.encoder.layers, baseline.arch.layers):
        layer = {"qk": [], "vo": [], "units": [], "attn": arch.attn, "ffn": arch.ffn}
        if arch.attn and arch.heads:
            a, b = new.self_attn, old.self_attn
            qk, vo = found_rows(a.q_proj.weight, b.q_proj.weight), found_rows(a.v_proj.weight, b.v_proj.weight)
            assert torch.equal(a.q_proj.bias, b.q_proj.bias[qk]) and torch.equal(a.k_proj.weight, b.k_proj.weight[qk])
            assert torch.equal(a.k_proj.bias, b.k_proj.bias[qk]) and torch.equal(a.v_proj.bias, b.v_proj.bias[vo])
            assert torch.equal(a.out_proj.weight, b.out_proj.weight[:, vo])
            assert torch.equal(a.grep_a, b.grep_a[:, [h.index for h in arch.heads]])
            assert torch.equal(a.grep_linear.weight, b.grep_linear.weight)
            d = baseline.arch.head_dim
            assert sorted({r // d for r in vo}) == [h.index for h in arch.heads]  # a head's rows are its own
            layer.update(qk=qk, vo=vo)
        if arch.attn:
            assert torch.equal(new.self_attn.out_proj.bias, old.self_attn.out_proj.bias)
        if arch.ffn and arch.ffn_dim:
            units = found_rows(new.fc1.weight, old.fc1.weight)
            assert torch.equal(new.fc1.bias, old.fc1.bias[units]) and torch.equal(new.fc2.weight, old.fc2.weight[:, units])
            layer["units"] = units
        if arch.ffn:
            assert torch.equal(new.fc2.bias, old.fc2.bias)
        kept["layers"].append(layer)
    prev = None
    for new, old in zip(baseline.feature_extractor.conv_layers, dense.feature_extractor.conv_layers):
        w_new, w_old = getattr(new, "0").weight, getattr(old, "0").weight
        w_old = w_old if prev is None else w_old[:, prev]
        channels = found_rows(w_new, w_old)
        kept["conv"].append(channels)
        prev = channels
    return kept


def zeroed_copy(dense: WavLM, kept: dict) -> WavLM:
    """The dense model with every structure the baseline lacks zeroed: its rows, or its block's output."""
    model = copy.deepcopy(dense)
    with torch.no_grad():
        for layer, k in zip(model.encoder.layers, kept["layers"]):
            a = layer.self_attn
            q_drop = [r for r in range(a.q_proj.out_features) if r not in k["qk"]]
            v_drop = [r for r in range(a.v_proj.out_features) if r not in k["vo"]]
            a.q_proj.weight[q_drop] = 0.0
            a.q_proj.bias[q_drop] = 0.0
            a.v_proj.weight[v_drop] = 0.0
            a.v_proj.bias[v_drop] = 0.0
            if not k["attn"]:
                a.out_proj.weight.zero_()
                a.out_proj.bias.zero_()
            u_drop = [j for j in range(layer.fc1.out_features) if j not in k["units"]]
            layer.fc1.weight[u_drop] = 0.0
            layer.fc1.bias[u_drop] = 0.0
            if not k["ffn"]:
                layer.fc2.weight.zero_()
                layer.fc2.bias.zero_()
        blocks = model.feature_extractor.conv_layers
        for i, channels in enumerate(kept["conv"][:-1]):
            nxt = getattr(blocks[i + 1], "0").weight
            nxt[:, [c for c in range(nxt.shape[1]) if c not in channels]] = 0.0
    return model


# ---------------------------------------------------------------------------- counts, weights, outputs
@pytest.mark.parametrize("pre_ln", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("seed", range(4))
def test_the_baseline_has_the_pruned_models_counts_and_the_dense_weights(pre_ln, seed):
    dense = dense_model(pre_ln, seed)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    like = pruned_like(dense, 50 + seed, conv=not pre_ln)
    baseline = magnitude_prune(dense, like.arch)
    assert counts(baseline.arch) == counts(like.arch)
    assert baseline.num_params() == like.num_params()
    assert dataclasses.replace(baseline.arch, layers=(), conv_channels=None) == \
        dataclasses.replace(dense.arch, layers=(), conv_channels=None)
    assert not gates(dense) and all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())
    kept = kept_structures(baseline, dense)  # every kept weight is the dense one, bit for bit
    with torch.no_grad():
        expected = zeroed_copy(dense, kept)(WAV, LENGTHS)
        got = baseline(WAV, LENGTHS)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert rel_err(a, b) < 1e-5


def test_edge_layers_block_gone_no_heads_no_units_and_a_head_without_qk():
    dense = dense_model(seed=3, layers=4)
    layers = (
        LayerArch(heads=(), ffn_dim=10, attn=False, ffn=True),  # attention gone (layer 0: keeps the position bias)
        LayerArch(heads=(HeadArch(2, 0, 3), HeadArch(3, 8, 1)), ffn_dim=0, attn=True, ffn=True),  # FFN: its bias only
        LayerArch(heads=(), ffn_dim=64, attn=True, ffn=False),  # attention: its bias only; every unit
        LayerArch(heads=tuple(HeadArch(h, 8, 8) for h in range(4)), ffn_dim=1),  # every head whole
    )
    like = dataclasses.replace(dense.arch, layers=layers)
    baseline = magnitude_prune(dense, like)
    assert counts(baseline.arch) == counts(like) and baseline.num_params() == WavLM(like).num_params()
    assert baseline.encoder.layers[0].self_attn.has_relative_bias
    with torch.no_grad():
        expected = zeroed_copy(dense, kept_structures(baseline, dense))(WAV, LENGTHS)
        for a, b in zip(baseline(WAV, LENGTHS), expected):
            assert rel_err(a, b) < 1e-5


# ---------------------------------------------------------------------------- the largest structures stay
def test_the_kept_structures_are_the_largest_by_magnitude():
    """Weights built so that every score's order is known: rank-one rows of chosen scales.

    Each score is a product of two norms (a row's and its partner's); the partner's scale is
    random, so that neither norm alone orders the structures as their product does."""
    dense = dense_model(seed=1, layers=1)
    g = torch.Generator().manual_seed(9)
    d, heads, hd = 32, 4, 8
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64) * 1.5 + 0.5  # in [0.5, 2)
    head_scale = torch.tensor([10.0, 1000.0, 100.0, 1.0], dtype=torch.float64)  # heads ranked 1, 2, 0, 3
    qk_f = rand(heads, hd) / 1.5 + 0.5  # in [0.83, 1.83): never reorders the heads
    vo_f = rand(heads, hd) / 1.5 + 0.5
    unit_f = torch.randperm(64, generator=g).double() + 1
    conv_f = [torch.randperm(32, generator=g).double() + 1 for _ in range(4)]
    k_r, o_r, fc2_r = rand(heads * hd), rand(heads * hd), rand(64)
    s = [None] + [rand(32) for _ in range(4)]  # input-channel scales of conv layers 1..4
    layer = dense.encoder.layers[0]
    a = layer.self_attn
    row = lambda scale, n: (scale[:, None] * torch.ones(1, n, dtype=torch.float64)).float()
    with torch.no_grad():
        a.q_proj.weight.copy_(row((head_scale[:, None] * qk_f).reshape(-1) / k_r, d))
        a.k_proj.weight.copy_(row(k_r, d))
        a.v_proj.weight.copy_(row((head_scale[:, None] * vo_f).reshape(-1) / o_r, d))
        a.out_proj.weight.copy_(row(o_r, d).T)  # column r of W_O: scale o_r
        layer.fc1.weight.copy_(row(unit_f / fc2_r, d))
        layer.fc2.weight.copy_(row(fc2_r, d).T)
        blocks = dense.feature_extractor.conv_layers
        getattr(blocks[0], "2").weight.copy_((conv_f[0] / s[1]).float())  # GroupNorm: its affine scales the channel
        getattr(blocks[0], "2").bias.zero_()
        for i in range(1, 5):  # filter [c_out, c_in, :] = r(c_out) * s_i(c_in), r = conv_f[i] / s_{i+1}
            w = getattr(blocks[i], "0").weight
            r = conv_f[i] / s[i + 1] if i < 4 else rand(32)  # the last layer: not scored, rows distinct
            w.copy_((r[:, None, None] * s[i][None, :, None]).float().expand_as(w))
    pairs = [(1, 5), (8, 8), (3, 2)]  # costs: (8, 8) > (1, 5) > (3, 2)
    like = dataclasses.replace(
        dense.arch, conv_channels=(5, 7, 9, 11, 32),
        layers=(LayerArch(heads=tuple(HeadArch(h, qk, vo) for h, (qk, vo) in enumerate(pairs)), ffn_dim=20),))
    baseline = magnitude_prune(dense, like)
    kept = kept_structures(baseline, dense)
    largest = lambda scores, k: sorted(torch.argsort(scores, descending=True)[:k].tolist())
    # heads 1, 2, 0 by scale receive (8, 8), (1, 5), (3, 2); inside each, the largest dims
    want = {1: (8, 8), 2: (1, 5), 0: (3, 2)}
    assert {h.index: (h.qk, h.vo) for h in baseline.arch.layers[0].heads} == want
    assert kept["layers"][0]["qk"] == [h * hd + j for h, (qk, _) in sorted(want.items()) for j in largest(qk_f[h], qk)]
    assert kept["layers"][0]["vo"] == [h * hd + j for h, (_, vo) in sorted(want.items()) for j in largest(vo_f[h], vo)]
    assert kept["layers"][0]["units"] == largest(unit_f, 20)
    assert [kept["conv"][i] for i in range(4)] == [largest(conv_f[i], c) for i, c in enumerate((5, 7, 9, 11))]


# ---------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("magnitude")
    dense = dense_model(seed=4)
    save_model(dense, root / "dense.safetensors")
    save_model(pruned_like(dense, 7, conv=True), root / "pruned.safetensors")
    return root


def test_the_command_writes_a_baseline_load_model_reads(files, capsys):
    out = files / "baseline.safetensors"
    assert cli.main(["export", str(files / "dense.safetensors"), "--magnitude-like", str(files / "pruned.safetensors"),
                     "--out", str(out)]) == 0
    assert "magnitude-pruned" in capsys.readouterr().out
    baseline, like = load_model(out), load_model(files / "pruned.safetensors")
    assert counts(baseline.arch) == counts(like.arch) and baseline.num_params() == like.num_params()
    direct = magnitude_prune(load_model(files / "dense.safetensors"), like.arch)
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in baseline.state_dict().items())


def bad_pairs(root):
    """(dense file, pruned file, a word of the refusal) for pairs that do not fit."""
    cases = {"family": dense_model(seed=5, family="hubert", relative_position_embedding=False, gru_rel_pos=False),
             "embed_dim": dense_model(seed=5, embed_dim=64, num_heads=8),
             "layers": dense_model(seed=5, layers=2),
             "FFN units": dense_model(seed=5, ffn_dim=128)}
    for word, model in cases.items():
        save_model(model, root / f"{word.replace(' ', '_')}.safetensors")
    yield from ((root / "dense.safetensors", root / f"{w.replace(' ', '_')}.safetensors", w) for w in cases)
    yield root / "pruned.safetensors", root / "pruned.safetensors", "already pruned"  # a pruned model as the dense one


def test_the_command_refuses_pairs_that_do_not_fit_in_one_line(files, capsys):
    for dense, like, word in bad_pairs(files):
        assert cli.main(["export", str(dense), "--magnitude-like", str(like), "--out", str(files / "x.safetensors")]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and word in err and "Traceback" not in err, err
    assert not (files / "x.safetensors").exists()
    proc, _ = run_cli("export", files / "dense.safetensors", "--magnitude-like", files / "family.safetensors",
                      "--out", files / "x.safetensors", cwd=files)  # a child process: exit 1, one line, no traceback
    assert_one_line_error(proc, "family")
    assert not (files / "x.safetensors").exists()


# ---------------------------------------------------------------------------- a real run's student
def test_the_baseline_of_a_tiny_runs_student(tmp_path):
    from pruned_upstream.config_files import load_config
    from pruned_upstream.training.models import build_teacher
    from pruned_upstream.training.run import run_prune

    args = tiny(write_manifest(tmp_path, 12, seed=0), "train.steps=40", "train.sparsity_warmup=0.2",
                "train.lr_lambdas=0.05", "train.lr_log_alpha=1.0", "train.save_every=1000")
    assert run_prune("demo", args, tmp_path / "run") == 0
    save_model(build_teacher(load_config("demo", args)), tmp_path / "teacher.safetensors")
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "student.safetensors")]) == 0
    assert cli.main(["export", str(tmp_path / "teacher.safetensors"), "--magnitude-like",
                     str(tmp_path / "student.safetensors"), "--out", str(tmp_path / "baseline.safetensors")]) == 0
    student, baseline = load_model(tmp_path / "student.safetensors"), load_model(tmp_path / "baseline.safetensors")
    teacher = load_model(tmp_path / "teacher.safetensors")
    assert not student.arch.is_dense() and counts(baseline.arch) == counts(student.arch)
    assert baseline.num_params() == student.num_params() < teacher.num_params()
    with torch.no_grad():
        expected = zeroed_copy(teacher, kept_structures(baseline, teacher))(WAV, LENGTHS)
        for a, b in zip(baseline(WAV, LENGTHS), expected):
            assert rel_err(a, b) < 1e-5
    assert cli.main(["export", str(tmp_path / "run"), "--magnitude-like", str(tmp_path / "student.safetensors"),
                     "--out", str(tmp_path / "x.safetensors")]) == 1  # a run directory is not a dense model


def test_every_architecture_field_but_the_pruned_counts_is_compared():
    from pruned_upstream.analysis.magnitude import _SHARED
    from pruned_upstream.arch import WavLMArch

    assert set(_SHARED) == {f.name for f in dataclasses.fields(WavLMArch)} - {"layers", "conv_channels"}
