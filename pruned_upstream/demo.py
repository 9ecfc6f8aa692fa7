"""`pruned-upstream demo`: the embedded default, end to end, on CPU, with no download.

    corpus (espeak-ng) -> tiny random teacher -> distil + prune -> export -> bench
        -> s3prl keyword spotting with the exported upstream (and with the teacher)
        -> report.md + plots in OUT

Every step writes into OUT, so a crash loses nothing that was finished, and a
second run reuses the corpus.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _step(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def make_corpus(out: Path) -> Path:
    from .demo_corpus import make_demo_corpus

    corpus = out / "corpus"
    manifest = corpus / "manifest.tsv"
    if manifest.exists():
        print(f"reusing {corpus}")
        return manifest
    return Path(make_demo_corpus(corpus))


def prune(out: Path, manifest: Path, quick: bool) -> Path:
    from .trainer import run_prune

    run_dir = out / "run"
    overrides = [f"data.source={manifest}"]
    if quick:
        overrides += ["train.steps=60", "train.save_every=30", "train.log_every=5"]
    code = run_prune("demo", overrides, run_dir, resume=(run_dir / "config.yaml").exists())
    if code:
        raise RuntimeError(f"pruning failed with exit code {code}")
    return run_dir


def export_models(out: Path, run_dir: Path) -> tuple[Path, Path, dict]:
    from .checkpoints import save_model
    from .config import load_config
    from .exporting import export
    from .trainer import build_teacher, load_student

    student = load_student(run_dir)
    compact = export(student)
    model_path, teacher_path = out / "model.safetensors", out / "teacher.safetensors"
    save_model(compact, model_path)
    save_model(build_teacher(load_config(str(run_dir / "config.yaml"))).eval(), teacher_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    return model_path, teacher_path, summary


def bench(model_path: Path, teacher_path: Path, quick: bool) -> dict:
    from .bench import gmacs_per_second, measure_speeds
    from .checkpoints import load_model

    model, teacher = load_model(model_path), load_model(teacher_path)
    seconds = 4.0
    times = measure_speeds([teacher, model], seconds, repeats=3 if quick else 7, threads=2)
    return {
        "teacher": {"params": teacher.num_params(), "gmacs_per_s": gmacs_per_second(teacher.arch, seconds)},
        "model": {"params": model.num_params(), "gmacs_per_s": gmacs_per_second(model.arch, seconds)},
        "seconds_of_audio": seconds,
        "teacher_s": times[0],
        "model_s": times[1],
        "speedup": times[0] / times[1],
    }


def keyword_spotting(out: Path, corpus: Path, upstream: Path, name: str, steps: int) -> float | None:
    """s3prl's speech_commands task, through our runner, on the demo corpus; returns test accuracy (%)."""
    from .demo_corpus import write_speech_commands_layout
    from .s3prl_plugin.runner import run_superb
    from .s3prl_plugin.tasks import config_path
    from .superb.results import read_expdir

    layout = out / "superb_data"
    if not (layout / "paths.json").exists():
        roots = write_speech_commands_layout(corpus, layout / "speech_commands")
        (layout / "paths.json").write_text(json.dumps({k: str(v) for k, v in roots.items()}))
    roots = json.loads((layout / "paths.json").read_text())
    expdir = out / "superb" / f"ks_{name}"
    override = ",,".join(
        [
            f"config.downstream_expert.datarc.speech_commands_root={roots['speech_commands_root']}",
            f"config.downstream_expert.datarc.speech_commands_test_root={roots['speech_commands_test_root']}",
            "config.downstream_expert.datarc.num_workers=0",
            "config.downstream_expert.datarc.batch_size=16",
            f"config.runner.total_steps={steps}",
            f"config.runner.eval_step={steps}",
            f"config.runner.save_step={steps}",
            f"config.runner.log_step={max(1, steps // 4)}",
            "config.optimizer.lr=1.0e-3",
        ]
    )
    argv = ["-m", "train", "-u", "pruned_wavlm_local", "-k", str(upstream), "-d", "speech_commands",
            "-c", str(config_path("KS")), "-o", override, "-p", str(expdir)]
    if (expdir / f"states-{steps}.ckpt").exists():
        print(f"reusing {expdir}")
    else:
        code = run_superb(argv)
        if code:
            raise RuntimeError(f"s3prl's runner failed for {name} (exit {code}); see {expdir}/stdout.log")
    return read_expdir(expdir).metrics.get("KS")


def write_report(out: Path, summary: dict, speed: dict, ks: dict, plots: list[Path]) -> Path:
    t, m = speed["teacher"], speed["model"]
    lines = [
        "# pruned-upstream demo",
        "",
        "A small WavLM teacher with fixed random weights, distilled and pruned on a",
        "synthesized (espeak-ng) corpus, exported, benchmarked, and evaluated on a",
        "keyword-spotting task through s3prl's own downstream runner.",
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
        f"Speed-up {speed['speedup']:.2f}x; MACs ratio {t['gmacs_per_s'] / m['gmacs_per_s']:.2f}x.",
        "",
        "## Keyword spotting through s3prl (SUPERB KS task code, demo corpus)",
        "",
        "| upstream | test accuracy (%) |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v:.2f} |" if v is not None else f"| {k} | - |" for k, v in ks.items()]
    if ks.get("pruned") is not None:
        from .superb.score import superb_score

        partial = superb_score({"KS": ks["pruned"]}, "paper", allow_missing=True)
        lines += ["", f"SUPERB score line (paper convention, KS only, partial): {partial.score:.1f} "
                  f"({partial.points['KS']:.1f} KS points; the demo corpus is not Speech Commands, so the "
                  "number only shows the pipeline works)."]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def run_demo(out: str = "demo_out", quick: bool = False) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = _step("1/6 corpus: synthesized speech with espeak-ng")
    manifest = make_corpus(out)
    _step("2/6 distil and prune the student (tiny random teacher)")
    run_dir = prune(out, manifest, quick)
    _step("3/6 export the compact model")
    model_path, teacher_path, summary = export_models(out, run_dir)
    print(f"wrote {model_path} (sparsity {summary['sparsity']:.4f}, target {summary['target_sparsity']})")
    _step("4/6 bench against the teacher")
    speed = bench(model_path, teacher_path, quick)
    print(json.dumps(speed))
    _step("5/6 plots")
    from .plots import plot_run

    plot_run(run_dir)
    plots = sorted((run_dir / "plots").glob("*.png"))
    _step("6/6 keyword spotting through s3prl's runner")
    steps = 20 if quick else 200
    ks = {
        "teacher": keyword_spotting(out, manifest.parent, teacher_path, "teacher", steps),
        "pruned": keyword_spotting(out, manifest.parent, model_path, "pruned", steps),
    }
    report = write_report(out, summary, speed, ks, plots)
    print(f"\nreport: {report}  ({time.perf_counter() - t0:.0f} s in all)")
    return 0
