"""`pruned-upstream bench`: parameters, MACs and speed of a model against a reference.

    count_macs(arch, num_samples)                       # analytic MACs per component, batch 1
    measure_speeds([model, ref], 10.0, repeats=5, threads=2)   # median seconds, runs alternated

MACs are multiply-accumulates of every convolution, linear map and attention
matmul (q.k^T over the query/key dims a head uses, attn.v over its value dims).
Norms, activations, the softmax, the position-bias gate's element-wise product
and the weight norm of the positional convolution are not counted: the SUPERB
leaderboard's profiler (B06901052/DeepSpeed, branch superb-challenge) counts
none of these as MACs either, except in its formula for
F.multi_head_attention_forward (profiler_extra_macs adds those terms back, for
comparison with the leaderboard's column). The last section holds the attention
layout experiments behind docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from .arch import LayerArch, WavLMArch
from .model.wavlm import SAMPLE_RATE, WavLM

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


# ---------------------------------------------------------------------------- params and speed
def count_params(model: torch.nn.Module) -> int:
    """Parameters of the model as s3prl counts them (every tensor of the module, gates excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("log_alpha"))


def measure_times(models: list, seconds: float, repeats: int, threads: int, device: str = "cpu") -> list[list[float]]:
    """Forward times (s) of each model on `seconds` of random audio, batch 1, `repeats` each.

    One warm-up forward per model is excluded; the repeats alternate between the
    models so that a slow moment of the machine hits them all alike.
    """
    if repeats < 1 or seconds <= 0 or threads < 1:
        raise ValueError(f"need repeats >= 1, seconds > 0, threads >= 1; got {repeats}, {seconds}, {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        wav = torch.randn(1, int(round(seconds * SAMPLE_RATE)), generator=g).to(device)
        models = [m.eval().to(device) for m in models]
        for m in models:
            _forward_time(m, wav)
        times = [[] for _ in models]
        for _ in range(repeats):
            for m, t in zip(models, times):
                t.append(_forward_time(m, wav))
        return times
    finally:
        torch.set_num_threads(previous)


def measure_speeds(models: list, seconds: float, repeats: int, threads: int, device: str = "cpu") -> list[float]:
    """Median forward seconds of each model (measure_times)."""
    return [statistics.median(t) for t in measure_times(models, seconds, repeats, threads, device)]


def measure_speed(model, seconds: float, repeats: int, threads: int, device: str = "cpu") -> float:
    """Median seconds of one forward over `seconds` of audio (see measure_speeds)."""
    return measure_speeds([model], seconds, repeats, threads, device)[0]


def _forward_time(model, wav: torch.Tensor) -> float:
    cuda = wav.device.type == "cuda"
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(wav.device)
        start = time.perf_counter()
        model(wav)
        if cuda:
            torch.cuda.synchronize(wav.device)
    return time.perf_counter() - start


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


# ---------------------------------------------------------------------------- command
def bench_command(args) -> int:
    """Params, GMACs per second of audio and speed of MODEL (or a synthetic one) against a reference."""
    model, ref, label = _models(args)
    row_m, row_r = _summary(model, args.seconds), _summary(ref, args.seconds)
    times = measure_times([model, ref], args.seconds, args.repeats, args.threads, args.device)
    for row, t in zip((row_m, row_r), times):
        row["seconds"], row["seconds_min"] = statistics.median(t), min(t)
    result = {
        "model": row_m,
        "reference": row_r,
        "speedup": row_r["seconds"] / row_m["seconds"],  # of the medians
        "speedup_of_minima": row_r["seconds_min"] / row_m["seconds_min"],  # steadier on a shared machine
        "macs_ratio": row_r["gmacs_per_s"] / row_m["gmacs_per_s"],
        "audio_seconds": args.seconds,
        "repeats": args.repeats,
        "threads": args.threads,
        "device": args.device,
        "model_source": label,
    }
    if args.superb_macs:
        result["superb_macs"] = _superb_block(args.superb_macs, model.arch, ref.arch)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0


def _models(args):
    from .checkpoints import load_model

    if args.synthetic_sparsity is not None:
        if args.model:
            raise ValueError(f"give either MODEL ({args.model}) or --synthetic-sparsity, not both")
        from .synthetic import synthetic_arch

        torch.manual_seed(0)  # random weights: only shapes matter for MACs and speed
        arch = synthetic_arch(args.synthetic_sparsity, cnn=args.cnn)
        label = f"synthetic WavLM Base, sparsity {args.synthetic_sparsity}"
        if args.cnn:
            label += f", CNN channels kept {arch.channels()}"
        model = WavLM(arch).eval()
    elif args.model:
        if args.cnn:
            raise ValueError("--cnn only applies with --synthetic-sparsity")
        model, label = load_model(args.model), str(args.model)
    else:
        raise ValueError("give a MODEL file or --synthetic-sparsity P")
    ref = load_model(args.ref) if args.ref else WavLM(dense_reference(model.arch)).eval()
    return model, ref, label


def _summary(model, seconds: float) -> dict:
    return {"params_M": count_params(model) / 1e6, "gmacs_per_s": gmacs_per_second(model.arch, seconds)}


def _superb_block(root, arch: WavLMArch, ref_arch: WavLMArch) -> dict:
    found = read_test_clean(root)
    chosen = superb_selection(found)
    lengths = [n for _, n in chosen]
    note = "the leaderboard's set" if len(found) == SUPERB_NUM_FILES else (
        f"only {len(found)} files found (the leaderboard uses all {SUPERB_NUM_FILES}): "
        f"the same rule applied to them"
    )
    return {
        "files": len(found),
        "utterances": [p for p, _ in chosen],
        "samples": lengths,
        "model_macs": superb_macs(arch, lengths),
        "reference_macs": superb_macs(ref_arch, lengths),
        "model_macs_leaderboard": superb_macs(arch, lengths, leaderboard=True),
        "reference_macs_leaderboard": superb_macs(ref_arch, lengths, leaderboard=True),
        "note": note,
    }


def format_report(r: dict) -> str:
    s = r["audio_seconds"]
    lines = [
        f"model: {r['model_source']}",
        f"{'':10} {'params (M)':>11} {'GMACs/s':>9} {f's per {s:g} s':>12} {'speed-up':>9}",
    ]
    for name, row, speed in (("reference", r["reference"], 1.0), ("model", r["model"], r["speedup"])):
        lines.append(
            f"{name:10} {row['params_M']:11.2f} {row['gmacs_per_s']:9.3f} {row['seconds']:12.3f} {speed:8.2f}x"
        )
    lines.append(
        f"MACs ratio (reference / model) {r['macs_ratio']:.2f}; speed-up of the fastest runs "
        f"{r['speedup_of_minima']:.2f}x; medians of {r['repeats']} repeats, "
        f"{r['threads']} threads, {r['device']}; GMACs/s counted on {s:g} s of audio"
    )
    if "superb_macs" in r:
        sm = r["superb_macs"]
        lines.append(
            f"SUPERB MACs over {len(sm['samples'])} utterances ({sm['note']}): "
            f"model {sm['model_macs']:.4e}, reference {sm['reference_macs']:.4e} "
            f"(with the profiler's extra counts: {sm['model_macs_leaderboard']:.4e}, "
            f"{sm['reference_macs_leaderboard']:.4e})"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- attention layout experiment
def compare_attention_layouts(
    arch: WavLMArch, seconds: float = 10.0, repeats: int = 5, threads: int = 2, encoder_only: bool = False
) -> dict:
    """Forward seconds of one model under alternative attention layouts (docs/performance.md).

    - "padded": model/attention.py as it is (q/k padded to the layer's widest qk,
      v to its widest vo, one SDPA call per layer);
    - "one width": q, k and v all padded to max(widest qk, widest vo), so that
      SDPA can take its fused (flash) CPU kernel, which needs equal q and v sizes;
    - "+ contiguous bias": the position bias and its gate made contiguous
      (B, H, T, T) before SDPA;
    - "per head": one SDPA call per head at its own qk/vo sizes (contiguous bias).
    `encoder_only` times the transformer alone (on random CNN features), without
    the CNN's time and noise. Returns {name: {"median", "min"}} and the largest
    absolute difference of the last hidden state from "padded".
    """
    torch.manual_seed(0)
    base = WavLM(arch).eval()
    variants = {
        "padded": base,
        "padded + contiguous bias": contiguous_bias_(_clone(base)),
        "one width": one_width_attention_(_clone(base)),
        "one width + contiguous bias": one_width_attention_(contiguous_bias_(_clone(base))),
        "per head + contiguous bias": per_head_attention_(contiguous_bias_(_clone(base))),
    }
    wav = torch.randn(1, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        outs = {name: m(wav)[-1] for name, m in variants.items()}
    if encoder_only:
        frames = conv_output_lengths(arch, wav.shape[1])[-1]
        variants = {name: _EncoderOnly(m, frames) for name, m in variants.items()}
    result = _timing_table(variants, seconds, repeats, threads)
    result["max_abs_diff"] = max(float((o - outs["padded"]).abs().max()) for o in outs.values())
    return result


class _EncoderOnly(torch.nn.Module):
    """The transformer of `model` on fixed random features of `frames` frames (the input wav is ignored)."""

    def __init__(self, model: WavLM, frames: int):
        super().__init__()
        self.model = model
        g = torch.Generator().manual_seed(2)
        self.register_buffer("features", torch.randn(1, frames, model.arch.embed_dim, generator=g))

    def forward(self, wav):
        return self.model.encoder(self.features)


def compare_with_s3prl(seconds: float = 10.0, repeats: int = 5, threads: int = 2) -> dict:
    """Dense WavLM Base: ours (as is, and with a contiguous bias) vs s3prl's WavLM, same random weights.

    s3prl's model is called as its `wavlm` upstream calls it: extract_features
    with an all-False padding mask. Returns {name: {"median", "min"}} and the
    largest absolute difference of the last hidden state.
    """
    from s3prl.upstream.wavlm.WavLM import WavLM as S3prlWavLM
    from s3prl.upstream.wavlm.WavLM import WavLMConfig

    from .arch import preset

    torch.manual_seed(0)
    ours = WavLM(preset("base")).eval()
    theirs = S3prlWavLM(WavLMConfig(dict(relative_position_embedding=True, gru_rel_pos=True, max_distance=800)))
    theirs.load_state_dict(ours.state_dict())  # our keys are the release's
    variants = {"ours": ours, "ours + contiguous bias": contiguous_bias_(_clone(ours)), "s3prl": _S3prlCall(theirs)}
    wav = torch.randn(1, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = float((ours(wav)[-1] - variants["s3prl"](wav)).abs().max())
    result = _timing_table(variants, seconds, repeats, threads)
    result["max_abs_diff"] = diff
    return result


class _S3prlCall(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, wav):  # (B, S) -> last hidden state (B, T, D)
        pad = torch.zeros(wav.shape, dtype=torch.bool, device=wav.device)
        return self.model.extract_features(wav, padding_mask=pad, mask=False)[0]


def _timing_table(variants: dict, seconds: float, repeats: int, threads: int) -> dict:
    times = measure_times(list(variants.values()), seconds, repeats, threads)
    return {name: {"median": statistics.median(t), "min": min(t)} for name, t in zip(variants, times)}


def _clone(model: WavLM) -> WavLM:
    twin = WavLM(model.arch).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def contiguous_bias_(model: WavLM) -> WavLM:
    """Make every layer's position bias and gate contiguous (B, H, T, T) (in place; experiment).

    compute_bias returns a permuted (T, T, H) embedding and rel_gate a permuted
    (B, T, H) gate; their product is then (B, H, T, T) with the head innermost,
    which SDPA copies into a contiguous mask in every layer.
    """
    for layer in model.encoder.layers:
        attn = layer.self_attn
        compute, gate = attn.compute_bias, attn.rel_gate
        attn.compute_bias = lambda t, compute=compute: compute(t).contiguous()
        attn.rel_gate = lambda x, gate=gate: gate(x).contiguous()
    return model


def per_head_attention_(model: WavLM) -> WavLM:
    """Replace the padded layout by one SDPA call per head at its own sizes (in place; experiment)."""
    for layer in model.encoder.layers:
        attn = layer.self_attn
        if attn.layer.attn and attn.layer.heads:
            attn._heads_output = lambda x, mask, pb, attn=attn: _per_head_output(attn, x, mask, pb)
    return model


def _per_head_output(attn, x, padding_mask, position_bias):
    """concat_i softmax(q_i k_i^T / sqrt(64) + B_i) v_i, head by head (no gates), (B, T, vo_total)."""
    import torch.nn.functional as F

    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)  # (B, T, sum of head sizes)
    bias = attn._bias(x, padding_mask, position_bias)  # (B|1, H|1, T, T), (B, 1, 1, T) or None
    b, t, _ = x.shape
    outs, q0, v0 = [], 0, 0
    for i, head in enumerate(attn.layer.heads):
        bias_i = None if bias is None else (bias[:, i : i + 1] if bias.shape[1] > 1 else bias)  # (B|1, 1, T|1, T)
        v_i = v[:, :, v0 : v0 + head.vo].unsqueeze(1)  # (B, 1, T, vo_i)
        if head.qk:
            q_i = q[:, :, q0 : q0 + head.qk].unsqueeze(1)  # (B, 1, T, qk_i)
            k_i = k[:, :, q0 : q0 + head.qk].unsqueeze(1)
            o = F.scaled_dot_product_attention(q_i, k_i, v_i, attn_mask=bias_i, scale=attn.scaling)
        else:  # softmax of the bias alone
            scores = bias_i if bias_i is not None else x.new_zeros(1, 1, 1, t)
            o = torch.softmax(scores.expand(b, 1, t, t), dim=-1) @ v_i
        outs.append(o[:, 0])  # (B, T, vo_i)
        q0, v0 = q0 + head.qk, v0 + head.vo
    return torch.cat(outs, dim=-1)  # (B, T, vo_total)


def one_width_attention_(model: WavLM) -> WavLM:
    """Pad q, k and v of every layer to one width, max(widest qk, widest vo) (in place; experiment)."""
    from .model.attention import _pad_index

    for layer in model.encoder.layers:
        attn = layer.self_attn
        if attn.layer.attn and attn.layer.heads and attn.qk_width:
            width = max(attn.qk_width, attn.vo_width)
            qk_index = _pad_index([h.qk for h in attn.layer.heads], width)
            vo_index = _pad_index([h.vo for h in attn.layer.heads], width)
            attn._heads_output = lambda x, mask, pb, attn=attn, w=width, qi=qk_index, vi=vo_index: _one_width_output(
                attn, x, mask, pb, w, qi, vi
            )
    return model


def _one_width_output(attn, x, padding_mask, position_bias, width, qk_index, vo_index):
    """The padded layout with q, k and v at one width; exact: zero columns add nothing. (B, T, vo_total)"""
    import torch.nn.functional as F

    b, t, _ = x.shape
    h = len(attn.layer.heads)
    q = attn._split(attn.q_proj(x), qk_index, width, False, h)  # (B, H, T, width)
    k = attn._split(attn.k_proj(x), qk_index, width, False, h)
    v = attn._split(attn.v_proj(x), vo_index, width, False, h)
    bias = attn._bias(x, padding_mask, position_bias)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scaling)  # (B, H, T, width)
    return o.transpose(1, 2).reshape(b, t, h * width).index_select(2, vo_index)  # (B, T, vo_total)
