"""The demo's report.md: pruning, size and speed, the ten SUPERB tasks for teacher and pruned model, plots."""

from __future__ import annotations

from pathlib import Path

from .demo_superb import CHANCE
from .superb.references import METRIC_INFO, METRICS


def write_report(out: Path, summary: dict, speed: dict, base: dict, superb, plots: list[Path],
                 quick: bool, layer_table: str | None = None, seconds: float | None = None,
                 family: str = "wavlm") -> Path:
    name = {"wavlm": "WavLM", "hubert": "HuBERT", "wav2vec2": "wav2vec 2.0"}.get(family, family)
    t, m = speed["teacher"], speed["model"]
    bd, bp = base["dense"], base["pruned"]
    lines = [
        "# pruned-upstream demo",
        "",
        f"A small {name} teacher with fixed random weights, distilled and pruned on a",
        "synthesized (espeak-ng) corpus, exported, benchmarked, and evaluated on the ten",
        "SUPERB tasks through s3prl's own downstream runner, on small data sets laid out",
        "as the real corpora are (docs/superb_small_data.md).",
        "",
        "## Pruning",
        "",
        f"- target sparsity {summary.get('target_sparsity'):.3f}, realised (deterministic masks) "
        f"{summary.get('sparsity'):.4f}, expected {summary.get('expected_sparsity', float('nan')):.4f}",
        f"- steps: {summary.get('steps')}",
        "",
        "## Size and speed (CPU, 2 threads)",
        "",
        "| model | parameters | GMACs per s of audio | seconds per "
        f"{speed['seconds_of_audio']:.0f} s of audio |",
        "| --- | ---: | ---: | ---: |",
        f"| teacher | {t['params']:,} | {t['gmacs_per_s']:.3f} | {speed['teacher_s']:.4f} |",
        f"| pruned | {m['params']:,} | {m['gmacs_per_s']:.3f} | {speed['model_s']:.4f} |",
        "",
        f"Speed-up {speed['speedup']:.2f}x; MACs ratio {t['gmacs_per_s'] / m['gmacs_per_s']:.2f}x. "
        "At this toy size the timings are dominated by per-call overhead; the next table is the",
        "same comparison at WavLM Base size.",
        "",
        "## At WavLM Base size (synthetic 80 % pruning, random weights, CPU, 1 thread)",
        "",
        f"| model | parameters | GMACs per s of audio | seconds per {base['seconds_of_audio']:.0f} s of audio |",
        "| --- | ---: | ---: | ---: |",
        f"| dense WavLM Base | {bd['params']:,} | {bd['gmacs_per_s']:.3f} | {bd['s']:.3f} |",
        f"| pruned to 0.8 | {bp['params']:,} | {bp['gmacs_per_s']:.3f} | {bp['s']:.3f} |",
        "",
        f"Speed-up {bd['s'] / bp['s']:.2f}x; MACs ratio {bd['gmacs_per_s'] / bp['gmacs_per_s']:.2f}x "
        "(`pruned-upstream bench --synthetic-sparsity 0.8`; docs/performance.md).",
        "",
    ]
    lines += superb_section(superb)
    if layer_table:
        lines += ["", "## Layers on demand: which layers to drop (docs/layers.md)", "", layer_table]
    if quick:
        lines[1:1] = ["", "_A --quick run: too few steps to reach the target sparsity; run `make demo` for the real one._"]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    if seconds is not None:
        lines += ["", f"The demo took {seconds / 60:.1f} minutes."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report




def _cell(metrics: dict, metric: str) -> str:
    return f"{metrics[metric]:.2f}" if metric in metrics else "-"


def superb_section(superb) -> list[str]:
    """The ten-task table (metrics and points of both upstreams) and both SUPERB scores."""
    names = list(superb.rows) or ["teacher", "pruned"]
    lines = ["", "## The ten SUPERB tasks through s3prl (small data, reduced protocol)", "",
             "| metric | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    lines[-2:] = ["| metric | " + " | ".join(names) + " | chance |", "| --- |" + " ---: |" * (len(names) + 1)]
    for metric in METRICS:
        unit = METRIC_INFO[metric][0]
        chance = f"{CHANCE[metric]:.1f}" if metric in CHANCE else ""
        lines.append(f"| {metric} ({unit}) | " + " | ".join(_cell(superb.metrics.get(n, {}), metric) for n in names)
                     + f" | {chance} |")
    lines += ["", "| SUPERB score (paper convention) | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    row = []
    for name in names:
        r = superb.rows.get(name)
        row.append("-" if r is None else f"{r['score']:.1f}" + (f" (partial: no {', '.join(r['missing'])})"
                                                                  if r["partial"] else ""))
    lines += ["| score | " + " | ".join(row) + " |", ""]
    if any(r.get("qbe_scorer") == "ours" for r in superb.rows.values()):
        lines.append("QbE: MTWV computed by our re-implementation of the QUESST 2014 TWV "
                     "(pruned_upstream/superb/mtwv.py), not QUESST14's official scorer.")
    lines += [f"Reduced protocol: {superb.protocol}.",
              "Chance: the accuracy of a uniform guess over the test set's classes, for the tasks whose "
              "labels the small data makes learnable (KS, IC, SID, ER).",
              "The models are tiny and the data sets are a few dozen synthetic utterances: the numbers show "
              "that every task's data, training, evaluation and scoring run end to end, not what the method "
              "achieves. Scores as JSON: superb_score.json (the `score --json` format)."]
    for name, secs in superb.seconds.items():
        lines.append(f"- {name}: the ten tasks took {secs:.0f} s")
    if superb.unavailable:
        lines += ["", "Tasks that could not run here, and how to get them:", ""]
        lines += [f"- {task}: {why}" for task, why in superb.unavailable.items()]
    return lines + submission_section(superb)


def submission_section(superb) -> list[str]:
    """The pruned upstream's leaderboard submission: where predict.zip is, and its model card, shown."""
    card = getattr(superb, "submission", None)
    note = getattr(superb, "submission_note", "")
    lines = ["", "## Leaderboard submission (pruned upstream)", ""]
    if card is None:
        return lines + [f"No predict.zip was written: {note or 'the pruned upstream has no result'}."]
    lines += [f"`pruned-upstream submit` packed `{card.parent / 'predict.zip'}` (s3prl's submit.py layout, "
              "docs/submission.md) and wrote this card beside it. Small data and a reduced protocol: a "
              "rehearsal of the submission, not one to upload."]
    if note:  # "left out: ..." lines of `submit`, then the comparison with s3prl's submit.py
        lines += [""] + [f"- {item}" for item in note.split("; ")]
    body = card.read_text().splitlines()
    return lines + [""] + [("##" + line) if line.startswith("#") else line for line in body]
