"""Time `load_model` on real-size WavLM Base and Large files (random weights).

    .venv/bin/python scripts/bench_loading.py DIR [REPEATS]     # REPEATS defaults to 3

Writes, once, into DIR (keep it outside the repository: the Large files are 1.3 GB
each) a WavLM Base (12 layers, 768 wide, ~95 M parameters) and a WavLM Large (24
layers, 1024 wide, ~316 M parameters) in the release layout (`{'cfg': ..., 'model':
state}`, torch's zip `.pt`) and in our format (`save_model`, `.safetensors`), then
prints one JSON line per file: the median of REPEATS timed `load_model` calls in
this process (the file is in the page cache after the first write, so this times
the parsing, checks and copies, not the disk).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pruned_upstream import load_model, save_model
from pruned_upstream.families import arch_from_release_cfg
from pruned_upstream.model import WavLM

CONV = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
# The released configurations' sizes (microsoft/unilm wavlm, WavLM-Base.pt and WavLM-Large.pt cfg).
CFGS = {
    "base": dict(extractor_mode="default", encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                 encoder_attention_heads=12, layer_norm_first=False, normalize=False),
    "large": dict(extractor_mode="layer_norm", encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
                  encoder_attention_heads=16, layer_norm_first=True, normalize=True),
}
COMMON = dict(conv_feature_layers=CONV, conv_pos=128, conv_pos_groups=16, relative_position_embedding=True,
              num_buckets=320, max_distance=800, gru_rel_pos=True, conv_bias=False)


def build(root: Path) -> list[Path]:
    files = []
    for name, cfg in CFGS.items():
        cfg = {**cfg, **COMMON}
        pt, ours = root / f"wavlm_{name}.pt", root / f"wavlm_{name}.safetensors"
        if not (pt.exists() and ours.exists()):
            torch.manual_seed(0)
            model = WavLM(arch_from_release_cfg(cfg))
            torch.save({"cfg": cfg, "model": model.state_dict()}, pt)
            save_model(model, ours)
        files += [pt, ours]
    return files


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    repeats = int(argv[1]) if len(argv) > 1 else 3
    root.mkdir(parents=True, exist_ok=True)
    for path in build(root):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model = load_model(path)
            times.append(time.perf_counter() - start)
            del model
        print(json.dumps({"file": path.name, "bytes": path.stat().st_size, "median_s": round(statistics.median(times), 3),
                          "times_s": [round(t, 3) for t in times]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
