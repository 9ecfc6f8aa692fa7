"""Loading and saving: the three formats, strictness, and clear errors for bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import release_cfg, save_release_checkpoint

from pruned_upstream import load_model, save_model
from pruned_upstream.arch import WavLMArch, parse_conv_layers, preset
from pruned_upstream.checkpoints import CheckpointError, hf_to_release_key
from pruned_upstream.cli import main
from pruned_upstream.model import WavLM, tiny_arch


def test_our_format_round_trip(tmp_path):
    model = WavLM(tiny_arch()).eval()
    save_model(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    assert again.arch == model.arch
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_arch_json_round_trip_and_version():
    arch = preset("large")
    assert WavLMArch.from_json(arch.to_json()) == arch
    blob = json.loads(arch.to_json())
    blob["format_version"] = 99
    with pytest.raises(ValueError, match="format version 99"):
        WavLMArch.from_json(json.dumps(blob))


def test_conv_layers_parsed_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == preset("base").conv_layers
    for bad in ["__import__('os').system('true')", "[(512,10,5)] * (10**10)", "[x for x in ()]", "[(1,2)]"]:
        with pytest.raises(ValueError):
            parse_conv_layers(bad)


def test_hf_key_map():
    assert hf_to_release_key("encoder.layers.3.attention.q_proj.weight") == "encoder.layers.3.self_attn.q_proj.weight"
    assert hf_to_release_key("encoder.layers.0.attention.rel_attn_embed.weight") == (
        "encoder.layers.0.self_attn.relative_attention_bias.weight"
    )
    assert hf_to_release_key("encoder.layers.2.attention.gru_rel_pos_const") == "encoder.layers.2.self_attn.grep_a"
    assert hf_to_release_key("encoder.layers.2.layer_norm.bias") == "encoder.layers.2.self_attn_layer_norm.bias"
    assert hf_to_release_key("encoder.layer_norm.bias") == "encoder.layer_norm.bias"
    assert hf_to_release_key("encoder.layers.1.feed_forward.output_dense.weight") == "encoder.layers.1.fc2.weight"
    assert hf_to_release_key("feature_extractor.conv_layers.0.layer_norm.weight") == "feature_extractor.conv_layers.0.2.weight"
    assert hf_to_release_key("feature_extractor.conv_layers.4.layer_norm.weight", "layer_norm") == (
        "feature_extractor.conv_layers.4.2.1.weight"
    )
    assert hf_to_release_key("encoder.pos_conv_embed.conv.parametrizations.weight.original0") == (
        "encoder.pos_conv.0.weight_g"
    )
    assert hf_to_release_key("feature_projection.projection.weight") == "post_extract_proj.weight"


class _Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def release_ckpt(tmp_path):
    path = tmp_path / "tiny.pt"
    save_release_checkpoint(path, release_cfg())
    return path


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.pt")


def test_truncated_checkpoints(tmp_path, release_ckpt):
    data = release_ckpt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: unreadable checkpoint"):
        load_model(tmp_path / "cut.pt")
    save_model(WavLM(tiny_arch()), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="cut.safetensors: unreadable safetensors"):
        load_model(tmp_path / "cut.safetensors")


def test_unknown_format(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match="unknown format"):
        load_model(tmp_path / "notes.pt")


def test_pickle_needing_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"cfg": {}, "model": {}, "x": _Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: refused global io.open in the pickle of a torch zip checkpoint: loading it would run code") as err:
        load_model(tmp_path / "evil.pt")
    assert "weights_only=False" in str(err.value)  # says how to convert
    assert not marker.exists()


def test_wrong_content(tmp_path, release_ckpt):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a WavLM release checkpoint"):
        load_model(tmp_path / "other.pt")
    ckpt = torch.load(release_ckpt, weights_only=True)
    del ckpt["model"]["encoder.layers.0.fc1.weight"]
    ckpt["model"]["extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['encoder.layers.0.fc1.weight'\].*extra.weight"):
        load_model(tmp_path / "broken.pt")


def test_hf_dir_without_weights(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert', not one of wavlm, hubert, wav2vec2"):
        load_model(tmp_path / "hf")


def test_cli_prints_one_line_for_a_bad_file(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    code = main(["inspect", str(tmp_path / "bad.pt")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "bad.pt" in err and "Traceback" not in err


def test_cli_unknown_subcommand_lists_the_known_ones():
    proc = subprocess.run([sys.executable, "-m", "pruned_upstream.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr and "demo" in proc.stderr and "score" in proc.stderr


def test_cli_inspect_prints_layers_and_saves_png(tmp_path, capsys, release_ckpt):
    assert main(["inspect", str(release_ckpt), "--png", str(tmp_path / "layers.png")]) == 0
    out = capsys.readouterr().out
    assert "total parameters" in out and (tmp_path / "layers.png").stat().st_size > 1000
