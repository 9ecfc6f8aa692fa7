"""Sizes a file declares are bounded or checked against what it stores before anything is built or
allocated from them: a release's `conv_feature_layers` and head count, a Hugging Face `hidden_size`.
Each case goes through the command line (`pruned-upstream inspect FILE`) in a child process under a
2 GiB data limit: one line on stderr, exit 1, no traceback, within seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_child import DATA_LIMIT, assert_one_line_error, run_cli
from conftest import release_cfg
from safetensors.torch import save_file

from pruned_upstream.arch import MAX_CONV_LAYERS, parse_conv_layers
from pruned_upstream.model.wavlm import WavLM, tiny_arch

def _release(path: Path, **cfg) -> Path:
    """A release checkpoint as torch.save writes it (plain data: `cfg` and a tiny model's weights)."""
    torch.save({"cfg": {**release_cfg(), **cfg}, "model": WavLM(tiny_arch()).state_dict()}, path)
    return path


@pytest.mark.parametrize("text", ["[(1,1,1)]*1000*1000*100", "[(1,1,1)]*1000*2", "[(512,3,2)]*40+[(512,3,2)]*999"])
def test_conv_feature_layers_is_bounded_before_it_is_expanded(tmp_path, text):
    """Each factor is small, their product is not: the old parser built 1e8 tuples (30 s, 2 GB)."""
    with pytest.raises(ValueError, match=f"describes [0-9,]+ conv layers \\(at most {MAX_CONV_LAYERS:,}\\)"):
        parse_conv_layers(text)
    proc, seconds = run_cli("inspect", _release(tmp_path / "bomb.pt", conv_feature_layers=text), cwd=tmp_path)
    assert_one_line_error(proc, "bomb.pt: ", "conv_feature_layers describes")
    assert seconds < 30


def test_conv_feature_layers_keeps_reading_the_releases():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2)
    assert len(parse_conv_layers(f"[(4,2,1)] * {MAX_CONV_LAYERS}")) == MAX_CONV_LAYERS
    for bad in ("[(0,3,2)]", "[(512,3,2)] * -1 + [(1,1,1)]", "[(1,1,1)] * True", "[" * 500 + "]" * 500,
                "+".join(["[(1,1,1)]"] * 2000), "[(2**40,3,2)]"):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_conv_layers(bad)


def test_a_head_count_within_a_declared_width_is_still_bounded(tmp_path):
    """1e8 heads of width 10 in a 1e9-wide model: heads <= width held, and 1e8 head records were built."""
    bomb = _release(tmp_path / "heads.pt", encoder_embed_dim=10**9, encoder_attention_heads=10**8)
    proc, seconds = run_cli("inspect", bomb, cwd=tmp_path)
    assert_one_line_error(proc, "heads.pt: ", "num_heads 100000000 is outside")
    assert seconds < 30


def _hf_dir(root: Path, **config) -> Path:
    """A Hugging Face directory: a tiny WavLM's weights (release names, HF's fixed points) without
    `mask_emb` (HF leaves it out when masking is off), and config.json with `config`."""
    from test_hostile_files import HF_CONFIG

    root.mkdir()
    state = {k: v.contiguous() for k, v in WavLM(tiny_arch()).state_dict().items() if k != "mask_emb"}
    save_file(state, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({**HF_CONFIG, **config}))
    return root


_PEAK = ("import resource, sys\n"
         f"resource.setrlimit(resource.RLIMIT_DATA, ({DATA_LIMIT}, {DATA_LIMIT}))\n"
         "from pruned_upstream import CheckpointError, load_model\n"
         "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
         "try:\n"
         "    load_model(sys.argv[1])\n"
         "    print('LOADED')\n"
         "except CheckpointError as err:\n"
         "    print('REFUSED', err)\n"
         "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")  # MiB (Linux: KiB)


@pytest.mark.parametrize("layers", [2, 0])
def test_a_declared_hidden_size_is_not_allocated_before_the_check(tmp_path, layers):
    """hidden_size 5e8 with one head: the old loader made the missing mask_emb (2 GB) before comparing."""
    hf = _hf_dir(tmp_path / "hf", hidden_size=500_000_000, num_attention_heads=1, num_hidden_layers=layers)
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(hf)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    refusal, grown = proc.stdout.splitlines()[-2:]
    assert refusal.startswith(f"REFUSED {hf}") and "does not match" in refusal, proc.stdout + proc.stderr
    assert "out of memory" not in refusal
    assert int(grown) < 200, f"loading grew the peak memory by {grown} MiB"
    ok = _hf_dir(tmp_path / "ok")  # the same files with the true width load, mask_emb zero
    from pruned_upstream import load_model

    model = load_model(ok)
    assert model.mask_emb.shape == (32,) and not model.mask_emb.any() and model.mask_emb.is_contiguous()


def test_the_child_data_limit_is_real():
    """The limit the cases above run under holds in a child (it would not on a system without it)."""
    proc = subprocess.run([sys.executable, "-c", "import resource, sys\n"
                           f"resource.setrlimit(resource.RLIMIT_DATA, ({DATA_LIMIT}, {DATA_LIMIT}))\n"
                           "try:\n    b = bytearray(3 << 30)\nexcept MemoryError:\n    print('limited')\n"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "limited"
