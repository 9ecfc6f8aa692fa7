"""`bench`: analytic MACs against a count over a real forward, the synthetic pattern, the command."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pruned_upstream.arch import HeadArch, LayerArch, preset
from pruned_upstream.macs import (
    SUPERB_LENGTHS,
    count_macs,
    dense_reference,
    gmacs_per_second,
    superb_macs,
    superb_selection,
)
from pruned_upstream.speed import compare_with_s3prl, count_params, measure_speed, measure_times
from pruned_upstream.checkpoints import save_model
from pruned_upstream.cli import main
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.synthetic_pruning import budget_sparsity, cnn_prunable, sparsity_of, synthetic_arch, transformer_prunable

BASE = preset("base")


class MacCounter(TorchFunctionMode):
    """Multiply-accumulates of every conv, linear map and attention matmul a forward really runs."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear:
            self.macs += out.numel() * args[1].shape[1]  # each output: in_features products
        elif func is F.conv1d:
            self.macs += out.numel() * args[1].shape[1] * args[1].shape[2]  # (C_in / groups) x kernel
        elif func is F.scaled_dot_product_attention:
            q, k, v = args[:3]  # (B, H, T, d): q.k^T then attn.v
            self.macs += q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        elif func is torch.baddbmm:  # the first CNN layer at inference (ConvBlock.normalised_frames)
            self.macs += out.numel() * args[1].shape[-1]
        elif getattr(func, "__name__", "") in ("matmul", "__matmul__") and out.dtype != torch.float64:
            # torch.matmul, a @ b; float64: the first CNN layer's norm statistics, not counted (as norms)
            self.macs += out.numel() * args[0].shape[-1]
        return out


def counted_macs(arch, num_samples: int, inference: bool = False) -> int:
    """MACs of one forward: by default through the layers as written (the path gradients take),
    with `inference` through the inference path (no gradient: fused layouts)."""
    torch.manual_seed(0)
    model = WavLM(arch).eval()
    with (torch.inference_mode() if inference else torch.enable_grad()), MacCounter() as counter:
        model(torch.randn(1, num_samples))
    return counter.macs


def uneven_arch():
    """Heads of different sizes (one without qk dims), a layer 0 without attention, a layer
    whose only head has no qk dim, a layer without FFN, pruned CNN channels."""
    layers = (
        LayerArch(heads=(), ffn_dim=20, attn=False),
        LayerArch(heads=(HeadArch(0, 3, 5), HeadArch(2, 0, 8), HeadArch(3, 6, 2)), ffn_dim=0, ffn=False),
        LayerArch(heads=(HeadArch(1, 0, 4),), ffn_dim=64),
    )
    return dataclasses.replace(tiny_arch(num_layers=3), layers=layers, conv_channels=(16, 20, 32, 8, 32))


def even_arch():
    """Pruned, but in every layer the heads share one size, qk = vo or qk = 0 (padding adds nothing)."""
    layers = (
        LayerArch(heads=(HeadArch(0, 5, 5), HeadArch(3, 5, 5)), ffn_dim=17),
        LayerArch(heads=(HeadArch(1, 0, 6), HeadArch(2, 0, 6)), ffn_dim=0, ffn=False),
    )
    return dataclasses.replace(tiny_arch(), layers=layers)


# ---------------------------------------------------------------------------- MACs
@pytest.mark.parametrize("name", ["dense", "even"])
def test_analytic_macs_equal_counted(name):
    arch = tiny_arch() if name == "dense" else even_arch()
    n = 7040  # 22 frames
    assert count_macs(arch, n)["total"] == counted_macs(arch, n)
    assert count_macs(arch, n, layout="padded") == count_macs(arch, n) == count_macs(arch, n, layout="one_width")


def test_analytic_macs_of_uneven_heads():
    arch, n = uneven_arch(), 9600
    used, padded, one = (count_macs(arch, n, layout=x) for x in ("used", "padded", "one_width"))
    # model/attention.py zero-pads heads, per kind or (docs/performance.md) to one width
    assert counted_macs(arch, n) == one["total"]  # model/attention.py pads q, k and v to one width
    t = used["frames"]
    # layer 1: qk (3, 0, 6), vo (5, 8, 2), 24 dims used; padded to qk 6 and vo 8: 3 x 14 per T^2;
    # to one width 8: 3 x 16. Layer 2 (qk 0, vo 4) is the same in every layout.
    assert padded["attention"] - used["attention"] == t * t * (3 * 14 - 24)
    assert one["attention"] - used["attention"] == t * t * (3 * 16 - 24)
    with pytest.raises(ValueError, match="layout"):
        count_macs(arch, n, layout="compact")


def test_dense_base_macs_match_the_leaderboard():
    assert 6.5 <= gmacs_per_second(BASE, 1.0) <= 7.5
    assert 6.5 <= gmacs_per_second(BASE, 10.0) <= 7.5
    # HuBERT Base (WavLM without the gated position bias): the leaderboard's profiler gives
    # exactly 1669156022848 (B06901052/DeepSpeed README, `sum of macs`)
    hubert = dataclasses.replace(BASE, relative_position_embedding=False, gru_rel_pos=False)
    assert superb_macs(hubert, SUPERB_LENGTHS, leaderboard=True) == 1669156022848
    assert superb_macs(BASE, SUPERB_LENGTHS, leaderboard=True) == pytest.approx(1.670e12, rel=5e-4)
    assert superb_macs(BASE, SUPERB_LENGTHS) < superb_macs(BASE, SUPERB_LENGTHS, leaderboard=True)


def test_too_short_input_is_refused():
    with pytest.raises(ValueError, match="too short"):
        count_macs(BASE, 300)


# ---------------------------------------------------------------------------- synthetic pattern
def test_synthetic_sparsity_and_pattern():
    arch = synthetic_arch(0.8)
    assert abs(sparsity_of(arch, BASE) - 0.8) <= 0.005
    ratio = count_macs(BASE, 160000)["total"] / count_macs(arch, 160000)["total"]
    assert ratio >= 1.8
    assert arch.conv_channels is None
    layers = arch.layers
    assert any(not layer.attn for layer in layers) and any(not layer.ffn for layer in layers)
    heads = [h for layer in layers for h in layer.heads]
    assert any(h.qk == 0 for h in heads)
    assert len({(h.qk, h.vo) for h in heads}) > 20  # heads of many sizes
    assert sum(len(layer.heads) for layer in layers) < 12 * 12  # some heads gone whole
    kept = [transformer_prunable(dataclasses.replace(arch, layers=(layer,))) for layer in layers]
    assert sum(kept[:4]) < sum(kept[-4:]) / 2  # the bottom pruned more (paper Figure 3b)
    assert synthetic_arch(0.8) == arch and synthetic_arch(0.8, seed=1) != arch  # fixed by the seed


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.9])
def test_synthetic_other_sparsities(p):
    assert abs(sparsity_of(synthetic_arch(p), BASE) - p) <= 0.005


def test_synthetic_model_runs():
    model = WavLM(synthetic_arch(0.8)).eval()
    assert 25e6 < count_params(model) < 28e6  # docs/method.md section 4.3: about 26.4 M at p = 0.8
    with torch.inference_mode():
        states = model(torch.randn(1, 8000))
    assert len(states) == 13 and states[-1].shape == (1, 24, 768)


def test_synthetic_cnn_matches_the_parameter_budget():
    whole, pruned = synthetic_arch(0.8), synthetic_arch(0.8, cnn=True, cnn_keep=0.5)
    assert pruned.conv_channels == (256,) * 6 + (512,)  # the last conv feeds a LayerNorm: whole
    assert abs(budget_sparsity(pruned, BASE) - 0.8) <= 0.005
    assert sparsity_of(pruned, BASE) < 0.8  # the CNN's savings are spent in the transformer
    assert count_params(WavLM(pruned)) == pytest.approx(count_params(WavLM(whole)), rel=0.005)
    assert count_macs(pruned, 160000)["cnn"] < 0.3 * count_macs(whole, 160000)["cnn"]
    with pytest.raises(ValueError, match="layer_norm"):
        synthetic_arch(0.8, base=preset("large"), cnn=True)


def test_prunable_counts_agree_with_the_gates():
    from pruned_upstream.model.prunable import PruneConfig, make_prunable, total_prunable

    arch = tiny_arch()
    student = make_prunable(WavLM(arch), PruneConfig(kinds=("mha", "qk", "vo", "ffn", "int", "conv")))
    assert total_prunable(student) == transformer_prunable(arch) + cnn_prunable(arch)


def test_dense_reference():
    arch = synthetic_arch(0.8, cnn=True)
    assert dense_reference(arch) == BASE
    assert dense_reference(tiny_arch()) == tiny_arch()  # a dense model is its own reference


# ---------------------------------------------------------------------------- speed
class Sleeper(torch.nn.Module):
    """A model whose forward takes a known time, and counts its calls."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def forward(self, wav):
        self.calls += 1
        time.sleep(self.seconds)
        return wav


def test_measure_times_alternates_warms_up_and_restores_threads():
    threads = torch.get_num_threads()
    fast, slow = Sleeper(0.001), Sleeper(0.03)
    times = measure_times([fast, slow], seconds=0.1, repeats=3, threads=1)
    assert [len(t) for t in times] == [3, 3] and (fast.calls, slow.calls) == (4, 4)  # + one warm-up each
    assert all(t >= 0.03 for t in times[1]) and max(times[0]) < min(times[1])
    assert torch.get_num_threads() == threads
    assert measure_speed(WavLM(tiny_arch()), seconds=0.2, repeats=1, threads=1) > 0
    with pytest.raises(ValueError, match="repeats"):
        measure_speed(WavLM(tiny_arch()), seconds=0.2, repeats=0, threads=1)


def test_compare_with_s3prl_runs_the_same_model():
    result = compare_with_s3prl(seconds=0.3, repeats=1, threads=1)
    assert result["max_abs_diff"] < 1e-4
    assert set(result) == {"ours", "s3prl", "max_abs_diff"}
    assert all(result[name]["min"] <= result[name]["median"] for name in ("ours", "s3prl"))


# ---------------------------------------------------------------------------- the command
def _bench_json(capsys, argv):
    assert main(["bench", *argv, "--seconds", "0.3", "--repeats", "1", "--threads", "1", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_bench_command_json(tmp_path, capsys):
    torch.manual_seed(0)
    pruned, dense = tmp_path / "pruned.safetensors", tmp_path / "dense.safetensors"
    save_model(WavLM(even_arch()), pruned)
    save_model(WavLM(tiny_arch()), dense)
    out = _bench_json(capsys, [str(pruned), "--ref", str(dense)])
    for side in ("model", "reference"):
        assert {"params_M", "gmacs_per_s", "seconds"} <= set(out[side])
    assert out["model"]["params_M"] < out["reference"]["params_M"]
    n = round(0.3 * 16000)  # the MACs are counted on the timed audio length
    assert out["macs_ratio"] == pytest.approx(counted_macs(tiny_arch(), n) / counted_macs(even_arch(), n))
    assert out["model"]["params_M"] * 1e6 == pytest.approx(sum(p.numel() for p in WavLM(even_arch()).parameters()))
    assert out["speedup"] == pytest.approx(out["reference"]["seconds"] / out["model"]["seconds"])
    assert out["model"]["seconds_min"] <= out["model"]["seconds"]
    alone = _bench_json(capsys, [str(dense)])  # the default reference of a dense model: itself
    assert alone["macs_ratio"] == 1.0


def test_bench_command_errors(tmp_path, capsys):
    assert main(["bench", "--seconds", "0.3"]) == 1
    assert capsys.readouterr().err.strip() == "pruned-upstream bench: error: give a MODEL file or --synthetic-sparsity P"
    assert main(["bench", str(tmp_path / "missing.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("missing.safetensors: no such file or directory") and len(err.splitlines()) == 1
    assert main(["bench", "--synthetic-sparsity", "0.5", "--cnn", str(tmp_path / "m.safetensors")]) == 1
    assert "either MODEL" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the leaderboard's utterances
def test_superb_selection_rule():
    lengths = [(f"u{i:04d}", 1000 + (i * 7919) % 2620) for i in range(2620)]  # a permutation of 1000..3619
    chosen = superb_selection(lengths)
    assert len(chosen) == 32  # NR % 82 == 1 over 2620 lines
    assert [n for _, n in chosen] == [1000 + 82 * i for i in range(32)]  # the (82 i + 1)-th shortest
    assert len(superb_selection(lengths[:200])) == 3


def test_superb_macs_on_a_small_test_clean(tmp_path, capsys):
    sizes = {"1089-134686-0000": 9000, "1089-134686-0001": 4000, "121-127105-0000": 6400}
    for name, n in sizes.items():
        spk, chap, _ = name.split("-")
        folder = tmp_path / "test-clean" / spk / chap
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"{name}.flac", np.zeros(n, dtype=np.float32), 16000)
    torch.manual_seed(0)
    path = tmp_path / "dense.safetensors"
    save_model(WavLM(tiny_arch()), path)
    out = _bench_json(capsys, [str(path), "--superb-macs", str(tmp_path)])["superb_macs"]
    assert out["files"] == 3 and out["samples"] == [4000]  # only the 1st of the sorted 3
    assert out["utterances"] == ["test-clean/1089/134686/1089-134686-0001.flac"]
    assert out["model_macs"] == counted_macs(tiny_arch(), 4000)  # a forward counted, not the formula
    assert "only 3 files" in out["note"]


# ---------------------------------------------------------------------------- the inference path
def unread_frame_macs(arch, n: int) -> int:
    """MACs of the trailing frames of the first CHUNKED_LAYERS - 1 conv layers that the next never reads."""
    from pruned_upstream.model.components import CHUNKED_LAYERS

    convs, channels = arch.conv_layers[:CHUNKED_LAYERS], arch.channels()
    lengths = [n]
    for _, k, s in convs:
        lengths.append((lengths[-1] - k) // s + 1)
    needed, macs = lengths[-1], 0
    for i in reversed(range(len(convs) - 1)):  # conv i's output feeds conv i + 1
        _, k, s = convs[i + 1]
        used = (needed - 1) * s + k
        macs += (lengths[i + 1] - used) * channels[i] * (1 if i == 0 else channels[i - 1]) * convs[i][1]
        needed = used
    return macs


@pytest.mark.parametrize("name", ["dense", "uneven"])
def test_inference_path_multiplies_no_more(name):
    """The inference path (fused q/k/v, the first CNN layer as a matmul, the first layers
    chunked in time) multiplies what the layers as written do, less the trailing frames of
    the chunked layers that the next never reads (one chunk at this length: no overlaps)."""
    arch, n = (tiny_arch() if name == "dense" else uneven_arch()), 7040
    assert unread_frame_macs(arch, n) > 0
    assert counted_macs(arch, n, inference=True) == counted_macs(arch, n) - unread_frame_macs(arch, n)


def _randomized(arch, seed):
    torch.manual_seed(seed)
    model = WavLM(arch).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return model


def test_inference_path_equals_the_layers_as_written_and_follows_new_weights():
    arch = uneven_arch()
    model, other = _randomized(arch, 0), _randomized(arch, 1)
    wav = torch.randn(3, 9000) * 0.3
    lengths = torch.tensor([9000, 6000, 3500])

    def as_written(m):
        with torch.enable_grad():
            return [h.detach() for h in m(wav, lengths)]

    def inference(m):
        with torch.inference_mode():
            return m(wav, lengths)

    for a, b in zip(inference(model), as_written(model)):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    one = wav[:1, :7000]  # batch 1: the gated position bias of the kept heads is made in place
    with torch.inference_mode():
        a = model(one)[-1]
    with torch.enable_grad():
        b = model(one)[-1].detach()
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    long = torch.randn(1, 120_000) * 0.3  # several time slices of the chunked CNN layers, overlapping
    with torch.inference_mode():
        a = model.feature_extractor(long)
    with torch.enable_grad():
        b = model.feature_extractor(long).detach()
    assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * b.abs().max()
    kept = [k for m in model.modules() for k in m.__dict__ if "folded" in k or "_fused" in k]
    assert kept == []  # nothing derived from the weights outlives a forward (tests/test_inference_cache.py)
    model.load_state_dict(other.state_dict())  # in place: version counters move
    for a, b in zip(inference(model), inference(other)):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()
    third = _randomized(arch, 2)
    model.load_state_dict(third.state_dict(), assign=True)  # new tensors
    for a, b in zip(inference(model), as_written(third)):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


# ---------------------------------------------------------------------------- the data pipeline's rate
def test_loader_rate_counts_what_it_delivers(tmp_path):
    from pruned_upstream.speed import loader_rate

    rng = np.random.default_rng(0)
    for i in range(12):
        soundfile.write(tmp_path / f"u{i:02d}.flac", (0.1 * rng.standard_normal(3000 + 500 * i)).astype(np.float32),
                        16000, subtype="PCM_16")
    r = loader_rate(tmp_path, 4000, 3, 0, 2)
    assert r["utterances"] == 6 and r["workers"] == 0 and r["batch_size"] == 3
    assert r["utterances_per_s"] == pytest.approx(6 / r["seconds"])
    assert 6 * 3000 / 16000 / r["seconds"] <= r["audio_s_per_s"] <= 6 * 4000 / 16000 / r["seconds"]  # cropped to 4000


def test_bench_names_the_machine_and_times_a_padded_batch(tmp_path, capsys, monkeypatch):
    import pruned_upstream.speed as speed

    torch.manual_seed(0)
    dense = tmp_path / "dense.safetensors"
    save_model(WavLM(tiny_arch()), dense)
    seen = []
    real = WavLM.forward
    monkeypatch.setattr(WavLM, "forward", lambda self, wav, lengths=None: seen.append(
        (tuple(wav.shape), None if lengths is None else lengths.tolist())) or real(self, wav, lengths))
    out = _bench_json(capsys, [str(dense), "--batch", "4"])
    assert out["batch_lengths"] == speed.mixed_lengths(4, 0.3) == [1920, 2880, 3840, 4800]
    # padded to the longest, lengths passed; warm-up + 1 repeat of the model and of the reference
    assert seen == [((4, 4800), [1920, 2880, 3840, 4800])] * 4
    assert out["machine"]["vector"] == torch.backends.cpu.get_cpu_capability() and out["machine"]["cpu"]
    assert out["compiled"] is False and "compile_and_warmup_s" not in out
    assert main(["bench", str(dense), "--seconds", "0.3", "--repeats", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert f"({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}" in text.splitlines()[1]
    assert main(["bench", str(dense), "--seconds", "0.3", "--batch", "0"]) == 1
    assert "--batch must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_compile_times_the_compiled_models(tmp_path, capsys):
    torch.manual_seed(0)
    dense = tmp_path / "dense.safetensors"
    save_model(WavLM(tiny_arch()), dense)
    out = _bench_json(capsys, [str(dense), "--compile"])
    assert out["compiled"] is True and out["compile_and_warmup_s"] > 0
    assert out["model"]["seconds"] > 0 and out["macs_ratio"] == 1.0
