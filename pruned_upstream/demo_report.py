"""The demo's report.md: pruning, size and speed, the ten SUPERB tasks for teacher and pruned model, plots."""

from __future__ import annotations

from pathlib import Path

from .demo_superb import CHANCE, COMPARED
from .superb.references import METRIC_INFO, METRICS


def write_report(out: Path, summary: dict, speed: dict, base: dict, superb, plots: list[Path],
                 quick: bool, layer_table: str | None = None, seconds: float | None = None,
                 family: str = "wavlm", pretraining: dict | None = None, closeness: dict | None = None) -> Path:
    name = {"wavlm": "WavLM", "hubert": "HuBERT", "wav2vec2": "wav2vec 2.0"}.get(family, family)
    t, m = speed["teacher"], speed["model"]
    bd, bp = base["dense"], base["pruned"]
    lines = [
        "# pruned-upstream demo",
        "",
        f"A small {name} teacher, pre-trained here (HuBERT-style masked prediction) on a",
        "synthesized (espeak-ng) corpus, then distilled into a student pruned with L0 gates,",
        "exported, benchmarked, and evaluated on the ten SUPERB tasks through s3prl's own",
        "downstream runner, on small data sets laid out as the real corpora are",
        "(docs/superb_small_data.md). What pruning keeps is measured against the same",
        "model with random weights and against the teacher pruned to the same size by",
        "weight magnitude, without distillation.",
        "",
    ]
    lines += pretraining_section(pretraining)
    lines += [
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
    lines += keeps_section(superb, closeness)
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




def pretraining_section(stats: dict | None) -> list[str]:
    if not stats:
        return []
    lines = ["## The teacher's pre-training (pruned_upstream/training/pretrain.py)", "",
             "| iteration | targets | clusters | steps | loss at the start | loss at the end | uniform guess |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for it in stats.get("iterations", []):
        targets = "MFCC k-means" if it["iteration"] == 1 else "k-means of its own hidden states"
        lines.append(f"| {it['iteration']} | {targets} | {it['k']} | {it['steps']} | {it['first_loss']:.3f} "
                     f"| {it['last_loss']:.3f} | {it['chance_loss']:.3f} |")
    seconds = stats.get("seconds")
    lines += ["", "Cross-entropy of the masked frames' cluster labels (HuBERT, Hsu et al. 2021)"
              + (f"; {seconds:.0f} s, cached in OUT for the next run." if seconds else "; reused from an earlier run."),
              ""]
    return lines


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.1f}" + (f" ({' / '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else "")


def keeps_section(superb, closeness: dict | None = None) -> list[str]:
    """Random teacher, pre-trained teacher, pruned student, magnitude baseline on COMPARED, per seed."""
    compared = getattr(superb, "compared", None) or {}
    order = [n for n in ("random", "teacher", "pruned", "magnitude") if n in compared]
    if not order:
        return []
    label = {"random": "random teacher", "teacher": "pre-trained teacher", "pruned": "pruned student (ours)",
             "magnitude": "magnitude baseline"}
    seeds = list(dict.fromkeys(seed for per in compared.values() for seed in per))  # in the order run
    tasks = [t for t in COMPARED if any(t in m for per in compared.values() for m in per.values())]
    lines = ["## What pruning keeps (test accuracy %, mean over downstream seeds, each seed in brackets)", "",
             "| task | chance | " + " | ".join(label[n] for n in order) + " |", "| --- |" + " ---: |" * (len(order) + 1)]
    means = {}
    for task in tasks:
        cells = []
        for name in order:
            values = [compared[name][seed][task] for seed in seeds if task in compared[name].get(seed, {})]
            means[name, task] = sum(values) / len(values) if values else None
            cells.append(_spread(values))
        lines.append(f"| {task} | {CHANCE[task]:.1f} | " + " | ".join(cells) + " |")
    partial = [seed for seed in seeds if not all(seed in compared[n] for n in order)]
    only = "".join(f"; seed {seed}: {' and '.join(label[n] for n in order if seed in compared[n])} only, the pair "
                   "whose gap is within a test utterance or two" for seed in partial)
    lines += ["", f"Seeds: {', '.join(map(str, seeds))}{only} (s3prl's `--seed`: the downstream's initialisation and "
              "data order; the upstreams are the same files). Rows: *random teacher*, the pre-training's starting "
              "point (what the demo's teacher was before it learnt anything); *pre-trained teacher*, the teacher "
              "the student is distilled from; *pruned student*, distilled and pruned by our method to the sparsity "
              "above; *magnitude baseline*, the pre-trained teacher cut to exactly the pruned student's counts "
              "(heads, dims, FFN units per layer) by weight magnitude and not trained (docs/baselines.md).", ""]
    for task in tasks:
        get = lambda name: means.get((name, task))  # noqa: E731
        said = []
        if get("teacher") is not None and get("random") is not None:
            said.append(f"teacher {'above' if get('teacher') > max(get('random'), CHANCE[task]) else 'NOT above'} "
                        "chance and the random teacher")
        if get("pruned") is not None and get("teacher") is not None:
            said.append(f"pruned {get('pruned') - get('teacher'):+.1f} points from its teacher")
        if get("pruned") is not None and get("magnitude") is not None:
            said.append(f"{get('pruned') - get('magnitude'):+.1f} points over the magnitude baseline")
        lines.append(f"- {task}: " + "; ".join(said))
    lines += ["", "Each test set holds 10 to 19 utterances (docs/superb_small_data.md): one utterance is "
              "5 to 10 points, which is why every number comes with its seeds.", ""]
    if closeness:
        lines += ["How far each model's last hidden state is from the pre-trained teacher's, on 32 files of the "
                  "corpus (no downstream training in between, so no seed):", "",
                  "| model | relative L2 distance | 1 - linear CKA |", "| --- | ---: | ---: |"]
        lines += [f"| {label.get(name, name)} | {c['rel_l2']:.3f} | {c['one_minus_cka']:.4f} |"
                  for name, c in closeness.items()]
        lines.append("")
    return lines


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
              "The models are tiny and the data sets are a few dozen synthetic utterances: outside the "
              "tasks of the previous section the numbers show that every task's data, training, evaluation "
              "and scoring run end to end, not what the method achieves. Scores as JSON: superb_score.json "
              "(the `score --json` format); the previous section's: superb_compare.json."]
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
