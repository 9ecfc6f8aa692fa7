"""`pruned-upstream analyze MODEL --audio DIR [--teacher CKPT] --out DIR [--svcca]`."""

from __future__ import annotations

from ..analysis.layer_report import analyze


def analyze_command(args) -> int:
    return analyze(args.model, args.audio, args.out, teacher=args.teacher, use_svcca=args.svcca,
                   max_files=args.max_files, max_seconds=args.max_seconds)
