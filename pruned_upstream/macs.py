"""Multiply-accumulates of a WavLM architecture, counted analytically (torch-free), and the leaderboard's count.

    count_macs(arch, num_samples)                # per component, batch 1
    superb_macs(arch, SUPERB_LENGTHS, leaderboard=True)   # the SUPERB leaderboard's MACs column

MACs are multiply-accumulates of every convolution, linear map and attention
matmul (q.k^T over the query/key dims a head uses, attn.v over its value dims).
Norms, activations, the softmax, the position-bias gate's element-wise product
and the weight norm of the positional convolution are not counted: the SUPERB
leaderboard's profiler (B06901052/DeepSpeed, branch superb-challenge) counts
none of these as MACs either, except in its formula for
F.multi_head_attention_forward (profiler_extra_macs adds those terms back, for
comparison with the leaderboard's column).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .arch import SAMPLE_RATE, LayerArch, WavLMArch

# The leaderboard's 32 utterances: LibriSpeech test-clean sorted by number of
# samples, every line with NR % 82 == 1 (awk), i.e. the (82 i + 1)-th, i = 0..31
# (B06901052/DeepSpeed, utils/get_libri_sample.sh and testing/s3prl_profiling_test.py,
# which lists these sample counts beside the chosen files).
SUPERB_STRIDE = 82
SUPERB_NUM_FILES = 2620
SUPERB_LENGTHS = (
    20560, 34560, 38480, 42560, 45600, 48720, 52000, 55120, 59120, 62720, 66400, 71200, 75200, 78640, 82800, 87520,
    92720, 98560, 104400, 111120, 118480, 125040, 132720, 142640, 154000, 166720, 180880, 197920, 217920, 239280,
    268160, 326000,
)


# ---------------------------------------------------------------------------- MACs
def conv_output_lengths(arch: WavLMArch, num_samples: int) -> list[int]:
    """Output length of every CNN layer: floor((L - kernel) / stride) + 1."""
    lengths, n = [], num_samples
    for _, kernel, stride in arch.conv_layers:
        n = (n - kernel) // stride + 1
        if n < 1:
            raise ValueError(f"{num_samples} samples are too short for the CNN (a layer would output {n} frames)")
        lengths.append(n)
    return lengths


LAYOUTS = ("used", "padded", "one_width")


def attention_macs(arch: WavLMArch, layer: LayerArch, t: int, layout: str = "used") -> int:
    """MACs of one attention block over T frames.

    Projections: T D (2 qk_total + vo_total) + T vo_total D; position-bias gate:
    T H 64 8 (`grep_linear`); matmuls q.k^T and attn.v, by `layout`:
    "used": T^2 (sum qk + sum vo), the dims the heads use;
    "padded": T^2 H (widest qk + widest vo), heads zero-padded per kind;
    "one_width": T^2 H 2 max(widest qk, widest vo), q, k and v padded to one width
    (T^2 H widest vo when no head has a qk dim: softmax of the bias, then attn.v).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not layer.attn or not layer.heads:
        return 0
    d, h = arch.embed_dim, len(layer.heads)
    macs = t * d * (2 * layer.qk_total + layer.vo_total) + t * layer.vo_total * d
    if arch.relative_position_embedding and arch.gru_rel_pos:
        macs += t * h * arch.head_dim * 8
    if layout == "used":
        return macs + t * t * (layer.qk_total + layer.vo_total)
    qk_width, vo_width = max(x.qk for x in layer.heads), max(x.vo for x in layer.heads)
    if layout == "one_width" and qk_width:
        qk_width = vo_width = max(qk_width, vo_width)
    return macs + t * t * h * (qk_width + vo_width)


def count_macs(arch: WavLMArch, num_samples: int, layout: str = "used") -> dict:
    """Analytic MACs of one forward over `num_samples` samples (batch 1), per component.

    Returns {"cnn", "proj", "pos_conv", "attention", "ffn", "total", "frames"};
    `layout` says how attention matmuls are counted (attention_macs).
    """
    lengths = conv_output_lengths(arch, num_samples)
    channels = (1,) + arch.channels()
    kernels = [k for _, k, _ in arch.conv_layers]
    cnn = sum(n * c_out * c_in * k for n, c_in, c_out, k in zip(lengths, channels, channels[1:], kernels))
    t, d = lengths[-1], arch.embed_dim
    proj = t * channels[-1] * d if arch.post_extract_proj else 0
    pos_len = t + 2 * (arch.conv_pos // 2) - arch.conv_pos + 1  # padding kernel // 2, then the 'same' trim
    pos_conv = pos_len * d * (d // arch.conv_pos_groups) * arch.conv_pos
    attention = sum(attention_macs(arch, layer, t, layout) for layer in arch.layers)
    ffn = sum(2 * t * d * layer.ffn_dim for layer in arch.layers if layer.ffn)
    out = dict(cnn=cnn, proj=proj, pos_conv=pos_conv, attention=attention, ffn=ffn)
    out["total"] = sum(out.values())
    out["frames"] = t
    return out


def gmacs_per_second(arch: WavLMArch, seconds: float) -> float:
    """GMACs per second of audio, counted on one input of `seconds` seconds."""
    return count_macs(arch, int(round(seconds * SAMPLE_RATE)))["total"] / seconds / 1e9


# ---------------------------------------------------------------------------- the leaderboard's MACs
def superb_selection(lengths: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The leaderboard's utterances: sorted by samples (ties by path), the (82 i + 1)-th (1-based).

    get_libri_sample.sh sorts `path,samples` lines numerically on the samples and
    keeps `NR % 82 == 1`; with all 2620 test-clean files that is 32 utterances.
    """
    ordered = sorted(lengths, key=lambda item: (item[1], item[0]))
    return ordered[::SUPERB_STRIDE]


def read_test_clean(root) -> list[tuple[str, int]]:
    """(path relative to `root`, samples) of every test-clean/<spk>/<chap>/*.flac|wav, read without decoding."""
    import soundfile

    root = Path(root)
    base = root / "test-clean" if (root / "test-clean").is_dir() else root
    files = sorted(p for p in base.glob("*/*/*") if p.suffix.lower() in (".flac", ".wav"))
    if not files:
        raise FileNotFoundError(f"no test-clean/<speaker>/<chapter>/*.flac files under {root}")
    out = []
    for path in files:
        info = soundfile.info(str(path))
        if info.samplerate != SAMPLE_RATE:
            raise ValueError(f"{path}: sample rate {info.samplerate}, the leaderboard's MACs assume {SAMPLE_RATE}")
        out.append((str(path.relative_to(root)), int(info.frames)))
    return out


def profiler_extra_macs(arch: WavLMArch, num_samples: int) -> int:
    """What the leaderboard's profiler adds as "MACs" in every attention layer, beyond products.

    Its formula for F.multi_head_attention_forward (which s3prl's HuBERT and WavLM
    call) also counts the q/k/v bias additions and the q scaling, T (3 qk + vo),
    the mask addition (1), the softmax (2) and the dropout (1, counted even in
    evaluation) per attention weight, 4 T^2 H. With these, count_macs over
    SUPERB_LENGTHS gives HuBERT Base's published 1669156022848 exactly.
    """
    t = conv_output_lengths(arch, num_samples)[-1]
    return sum(
        t * (3 * layer.qk_total + layer.vo_total) + 4 * t * t * len(layer.heads)
        for layer in arch.layers
        if layer.attn and layer.heads
    )


def superb_macs(arch: WavLMArch, lengths, leaderboard: bool = False) -> int:
    """Sum of MACs over utterances of the given sample counts, one forward each (batch 1).

    `leaderboard=True` adds profiler_extra_macs, to compare with the leaderboard's column.
    """
    total = sum(count_macs(arch, n)["total"] for n in lengths)
    return total + (sum(profiler_extra_macs(arch, n) for n in lengths) if leaderboard else 0)


# ---------------------------------------------------------------------------- reference
def dense_reference(arch: WavLMArch) -> WavLMArch:
    """The dense model of the same family: every head, FFN unit, block and CNN channel back.

    The architecture does not store the original FFN size of a pruned layer; it is
    taken as 4 x embed_dim (every WavLM/HuBERT/wav2vec 2.0 release), or the widest
    layer if that is wider.
    """
    ffns = {layer.ffn_dim for layer in arch.layers}
    whole = LayerArch.dense(arch.num_heads, arch.head_dim, max(ffns, default=0))
    if arch.conv_channels is None and len(ffns) == 1 and all(layer == whole for layer in arch.layers):
        return arch  # already dense
    layer = LayerArch.dense(arch.num_heads, arch.head_dim, max(ffns | {4 * arch.embed_dim}))
    return dataclasses.replace(arch, layers=(layer,) * arch.num_layers, conv_channels=None)
