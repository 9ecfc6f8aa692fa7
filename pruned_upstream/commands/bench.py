"""`pruned-upstream bench [MODEL] [--ref MODEL] [--synthetic-sparsity P [--cnn]] [--superb-macs DIR]
[--batch N] [--compile] [--profile] [--json]`.

Parameters, GMACs per second of audio and speed of a model against a reference
(by default the dense model of the same family), with the CPU (and its vector
unit) or GPU they ran on.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from ..arch import WavLMArch
from ..checkpoints import load_model
from ..macs import SUPERB_NUM_FILES, dense_reference, gmacs_per_second, read_test_clean, superb_macs, superb_selection
from ..model.wavlm import WavLM
from ..speed import count_params, machine, measure_times, mixed_lengths, profile_ops


def bench_command(args) -> int:
    """Params, GMACs per second of audio and speed of MODEL (or a synthetic one) against a reference."""
    model, ref, label = _models(args)
    row_m, row_r = _summary(model, args.seconds), _summary(ref, args.seconds)
    batch = getattr(args, "batch", 1)
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    lengths = mixed_lengths(batch, args.seconds)
    profile = profile_ops(model, args.seconds, args.threads) if getattr(args, "profile", False) else None
    timed, compile_s = [model, ref], None
    if getattr(args, "compile", False):
        start = time.perf_counter()
        timed = [torch.compile(m) for m in timed]  # compiled on the warm-up forward below
        compile_s = start
    times = measure_times(timed, args.seconds, args.repeats, args.threads, args.device,
                          lengths=lengths if batch > 1 else None)
    if compile_s is not None:
        compile_s = time.perf_counter() - compile_s - sum(map(sum, times))  # the warm-ups: compilation
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
        "machine": machine(args.device),
        "batch_lengths": lengths,
        "compiled": compile_s is not None,
        "model_source": label,
    }
    if compile_s is not None:
        result["compile_and_warmup_s"] = compile_s
    if args.superb_macs:
        result["superb_macs"] = _superb_block(args.superb_macs, model.arch, ref.arch)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
        if profile:
            print(profile)
    return 0


def _models(args):
    if args.synthetic_sparsity is not None:
        if args.model:
            raise ValueError(f"give either MODEL ({args.model}) or --synthetic-sparsity, not both")
        from ..synthetic_pruning import synthetic_arch

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
    m = r["machine"]
    lines = [
        f"model: {r['model_source']}",
        f"on: {m.get('gpu') or m['cpu']} ({'GPU' if m.get('gpu') else m['vector']}), torch {m['torch']}",
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
    if len(r["batch_lengths"]) > 1:
        lines.append(f"batch of {len(r['batch_lengths'])} utterances of {min(r['batch_lengths'])} to "
                     f"{max(r['batch_lengths'])} samples, padded; times per batch")
    if r["compiled"]:
        lines.append(f"both models under torch.compile (compilation and warm-up: {r['compile_and_warmup_s']:.1f} s)")
    if "superb_macs" in r:
        sm = r["superb_macs"]
        lines.append(
            f"SUPERB MACs over {len(sm['samples'])} utterances ({sm['note']}): "
            f"model {sm['model_macs']:.4e}, reference {sm['reference_macs']:.4e} "
            f"(with the profiler's extra counts: {sm['model_macs_leaderboard']:.4e}, "
            f"{sm['reference_macs_leaderboard']:.4e})"
        )
    return "\n".join(lines)
