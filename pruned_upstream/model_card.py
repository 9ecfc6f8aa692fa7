"""The model card of a leaderboard submission: what was submitted, from which upstream, scoring what.

    card = build_card(plan, members, card_dir, upstream=None, run_dir=None)
    card_markdown(card)   # the same facts, readable

The metrics and both SUPERB scores come from the same expdirs and readers as
`pruned-upstream score` (superb/expdirs.py); the size of the upstream from the
file itself: parameters as s3prl sees them (every parameter of the upstream
expert s3prl builds), MACs by the leaderboard's convention over its 32
test-clean utterances (macs.superb_macs with leaderboard=True, the lengths in
macs.SUPERB_LENGTHS). docs/submission.md lists each field's source.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path

from .errors import CheckpointError
from .s3prl_plugin.tasks import S3PRL_COMMIT
from .small_files import open_regular, read_yaml_file
from .superb.expdirs import model_from_expdirs
from .superb.score import superb_score
from .superb.submission import ARGS, Plan

ZIP_NOTE = ("members and their bytes are those s3prl's submit.py packs from `expdirs`; zip metadata "
            "(timestamps, member order, compression level) may differ")


def _version() -> str:
    try:
        return metadata.version("pruned-upstream")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def upstream_facts(ckpt: str | None) -> dict:
    """File, sha256, parameters (s3prl's count) and leaderboard MACs of the upstream, or why not."""
    if not ckpt:
        return {"path": None, "note": "no upstream file named by the expdirs' args (upstream_ckpt); use --upstream"}
    path = Path(ckpt)
    facts: dict = {"path": str(path)}
    if not path.is_file():
        return {**facts, "note": "not a regular file here: sha256, parameters and MACs not measured"}
    import torch

    from .macs import SUPERB_LENGTHS, superb_macs
    from .s3prl_plugin.expert import UpstreamExpert

    facts["sha256"] = sha256_of(path)
    try:
        with torch.no_grad():
            expert = UpstreamExpert(str(path))
    except (ValueError, OSError, MemoryError) as err:  # CheckpointError included: the card says why
        return {**facts, "note": f"not loadable ({' '.join(str(err).split())}): parameters and MACs not measured"}
    # s3prl hands the upstream expert to its runner whole: every one of its parameters counts
    facts["params"] = int(sum(p.numel() for p in expert.parameters()))
    macs = superb_macs(expert.model.arch, SUPERB_LENGTHS, leaderboard=True)
    facts.update(macs=int(macs), macs_g=macs / 1e9,
                 macs_convention=f"sum over the leaderboard's {len(SUPERB_LENGTHS)} LibriSpeech test-clean "
                                 "utterances (their sample counts: macs.SUPERB_LENGTHS), counted analytically with "
                                 "the leaderboard profiler's extra attention terms (macs.superb_macs)")
    return facts


def _scores(metrics: dict) -> dict:
    out = {}
    for convention in ("paper", "leaderboard"):
        result = superb_score(metrics, convention, allow_missing=True)
        out[convention] = {"score": result.score, "points": result.points, "missing": list(result.missing),
                           "partial": result.partial}
    return out


def _run_config(run_dir: str | None) -> tuple[dict | None, dict | None]:
    if not run_dir:
        return None, None
    config = read_yaml_file(Path(run_dir) / "config.yaml")
    if not isinstance(config, dict):
        raise CheckpointError(Path(run_dir) / "config.yaml", "expected a YAML mapping")
    return config.get("teacher"), config


def build_card(plan: Plan, members: list[str] | None, card_dir: Path, upstream: str | None = None,
               run_dir: str | None = None) -> dict:
    results = model_from_expdirs(plan.root.name, plan.scored_expdirs) if plan.scored_expdirs else None
    metrics = dict(results.metrics) if results else {}
    teacher, config = _run_config(run_dir)
    expdirs = {arg: os.path.relpath(plan.entries[arg].expdir, card_dir) for arg in ARGS if arg in plan.entries}
    return {
        "upstream": upstream_facts(upstream or (results.upstream_ckpt if results else None)),
        "metrics": metrics,
        "metric_sources": dict(results.sources) if results else {},
        "superb_score": _scores(metrics),
        "teacher": teacher,
        "pruning_config": config,
        "pruning_config_note": None if run_dir else "not given (--run-dir RUN: the run's config.yaml)",
        "versions": {"pruned_upstream": _version(), "s3prl_commit": S3PRL_COMMIT},
        "submission": {"zip": "predict.zip" if members is not None else None, "members": members or [],
                       "expdirs": expdirs, "missing": dict(plan.missing), "note": ZIP_NOTE,
                       "results_dir": os.path.relpath(plan.root, card_dir)},
    }


def card_markdown(card: dict) -> str:
    up, sub = card["upstream"], card["submission"]
    lines = ["# Model card", "", "## Upstream", "", f"- file: `{up.get('path')}`"]
    if "sha256" in up:
        lines += [f"- sha256: `{up['sha256']}`", f"- parameters: {up['params']:,} ({up['params'] / 1e6:.2f} M)",
                  f"- MACs: {up['macs']:,} ({up['macs_g']:.2f} G), {up['macs_convention']}"]
    else:
        lines.append(f"- {up.get('note')}")
    lines += ["", "## SUPERB", "", "| metric | value | source |", "|---|---|---|"]
    lines += [f"| {m} | {v:.4f} | `{card['metric_sources'].get(m, '')}` |" for m, v in card["metrics"].items()]
    for convention, result in card["superb_score"].items():
        partial = f" (partial: missing {', '.join(result['missing'])})" if result["partial"] else ""
        lines.append(f"\nSUPERB score, {convention} convention: {result['score']:.1f}{partial}")
    lines += ["", "## Provenance", "", f"- teacher: `{card['teacher']}`",
              f"- pruning config: {'below in model_card.json' if card['pruning_config'] else card['pruning_config_note']}",
              f"- pruned-upstream {card['versions']['pruned_upstream']}, s3prl commit {card['versions']['s3prl_commit']}",
              "", "## Submission", "", f"- zip: {sub['zip'] or 'not written'} ({len(sub['members'])} members); "
              f"{sub['note']}", "", "| submit.py argument | directory |", "|---|---|"]
    lines += [f"| --{arg} | `{path}` |" for arg, path in sub["expdirs"].items()]
    lines += [f"| --{arg} | left out: {why} |" for arg, why in sub["missing"].items()]
    return "\n".join(lines) + "\n"
