"""`pruned-upstream demo`: the embedded default, end to end, on CPU, with no download.

    corpus (espeak-ng) -> tiny random teacher -> distil + prune -> export -> bench
        -> the ten SUPERB tasks through s3prl's runner, teacher and pruned model, on small
           data in the real layouts (demo_superb.py) -> report.md + plots + superb_score.json in OUT

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
    from .data.demo_corpus import make_demo_corpus

    corpus = out / "corpus"
    manifest = corpus / "manifest.tsv"
    if manifest.exists():
        print(f"reusing {corpus}")
        return manifest
    return Path(make_demo_corpus(corpus))


def pretrain_teacher(out: Path, manifest: Path, quick: bool, family: str = "wavlm") -> tuple[Path, Path, dict]:
    """The demo's teacher: the tiny random model of `--config demo`, pre-trained on the corpus.

    Returns (random teacher file, pre-trained teacher file, pre-training stats). The random model is
    the pre-training's starting point (the same seed), kept as the table's "random teacher" row. A
    rerun with the same settings reuses the pre-trained file (OUT/pretrain.json records them); new
    settings train it again and remove the pruning run that was distilled from the old one."""
    import dataclasses
    import shutil

    from .checkpoints import save_model
    from .config_files import load_config
    from .training.models import build_teacher
    from .training.pretrain import PretrainConfig, pretrain, read_corpus

    tag = "" if family == "wavlm" else f"_{family}"
    random_path, path = out / f"teacher_random{tag}.safetensors", out / f"teacher_pretrained{tag}.safetensors"
    stats_path = out / f"pretrain{tag}.json"
    cfg = PretrainConfig(steps=(15, 15), clusters=(20, 20)) if quick else PretrainConfig()
    model = build_teacher(load_config("demo", [f"teacher.arch.family={family}"] if family != "wavlm" else []))
    save_model(model, random_path)
    settings = {"config": dataclasses.asdict(cfg), "corpus": str(manifest), "family": family}
    if path.exists() and stats_path.exists():
        stats = json.loads(stats_path.read_text())
        if stats.get("settings") == json.loads(json.dumps(settings)):
            print(f"reusing {path}")
            return random_path, path, stats
    run_dir = out / ("run" if family == "wavlm" else f"run_{family}")
    if run_dir.is_dir() and not run_dir.is_symlink():  # distilled from a teacher that is about to change
        print(f"removing {run_dir}: its teacher is pre-trained again")
        shutil.rmtree(run_dir)
    model.requires_grad_(True)
    start = time.perf_counter()
    stats = pretrain(model, read_corpus(manifest), cfg, log=lambda line: print(f"pretrain: {line}", flush=True))
    stats.update(settings=settings, seconds=time.perf_counter() - start)
    save_model(model.eval(), path)
    stats_path.write_text(json.dumps(stats, indent=1) + "\n")
    return random_path, path, stats


def prune(out: Path, manifest: Path, quick: bool, family: str = "wavlm", teacher: Path | None = None) -> Path:
    from .training.run import run_prune

    run_dir = out / ("run" if family == "wavlm" else f"run_{family}")
    overrides = [f"data.source={manifest}"]
    if teacher is not None:  # the pre-trained teacher (its file carries its family)
        # Lagrange multipliers 5x faster than the config's 0.02: distilled from the pre-trained teacher, 600
        # steps at 0.02 ended at sparsity 0.36 for the target 0.5, at 0.1 at 0.503 (docs/training.md)
        overrides += [f"teacher.checkpoint={teacher}", "train.lr_lambdas=0.1"]
    elif family != "wavlm":  # the tiny teacher of another family: no relative position bias (arch.dense_arch)
        overrides.append(f"teacher.arch.family={family}")
    if quick:
        overrides += ["train.steps=60", "train.save_every=30", "train.log_every=5"]
    code = run_prune("demo", overrides, run_dir, resume=(run_dir / "config.yaml").exists())
    if code:
        raise RuntimeError(f"pruning failed with exit code {code}")
    return run_dir


def export_models(out: Path, run_dir: Path) -> tuple[Path, Path, dict]:
    from .checkpoints import save_model
    from .config_files import load_config
    from .exporting import export
    from .run_dir import load_student, read_summary
    from .training.models import build_teacher

    student = load_student(run_dir)
    compact = export(student)
    model_path, teacher_path = out / "model.safetensors", out / "teacher.safetensors"
    save_model(compact, model_path)
    save_model(build_teacher(load_config(str(run_dir / "config.yaml"))).eval(), teacher_path)
    summary = read_summary(run_dir)
    return model_path, teacher_path, summary


def magnitude_baseline(out: Path, model_path: Path, teacher_path: Path) -> Path:
    """The teacher pruned to the pruned model's exact counts by weight magnitude, without distillation."""
    from .analysis.magnitude import magnitude_prune
    from .checkpoints import load_model, save_model

    path = out / "magnitude.safetensors"
    save_model(magnitude_prune(load_model(teacher_path), load_model(model_path).arch), path)
    return path


def closeness(corpus: Path, teacher_path: Path, others: dict[str, Path]) -> dict[str, dict[str, float]]:
    """How far each model's last hidden state is from the teacher's on the corpus: relative L2 and 1 - CKA."""
    from .analysis.probes import final_state, load_audio_sample, relative_l2
    from .analysis.similarity import linear_cka
    from .checkpoints import load_model

    audio = load_audio_sample(corpus / "wavs", max_files=32, max_seconds=4.0)
    ref = final_state(load_model(teacher_path), audio)
    out = {}
    for name, path in others.items():
        last = final_state(load_model(path), audio)
        out[name] = {"rel_l2": relative_l2(last, ref), "one_minus_cka": 1 - linear_cka(last, ref)}
    return out


def bench(model_path: Path, teacher_path: Path, quick: bool) -> dict:
    from .checkpoints import load_model
    from .macs import gmacs_per_second
    from .speed import measure_speeds

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


def base_size_bench(quick: bool) -> dict:
    """The same comparison at WavLM Base size: a synthetic 80 % pruning (no training) vs dense Base."""
    from .arch import preset
    from .macs import gmacs_per_second
    from .model import WavLM
    from .speed import measure_speeds
    from .synthetic_pruning import synthetic_arch

    torch_seed(0)
    dense, pruned = WavLM(preset("base")).eval(), WavLM(synthetic_arch(0.8)).eval()
    seconds = 2.0 if quick else 4.0
    times = measure_speeds([dense, pruned], seconds, repeats=2 if quick else 3, threads=1)
    return {
        "seconds_of_audio": seconds,
        "dense": {"params": dense.num_params(), "gmacs_per_s": gmacs_per_second(dense.arch, seconds), "s": times[0]},
        "pruned": {"params": pruned.num_params(), "gmacs_per_s": gmacs_per_second(pruned.arch, seconds), "s": times[1]},
    }


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def keyword_spotting(out: Path, corpus: Path, upstream: Path, name: str, steps: int) -> float | None:
    """s3prl's speech_commands task, through our runner, on the demo corpus; returns test accuracy (%)."""
    from .data.demo_corpus import write_speech_commands_layout
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


def layer_study(out: Path, model_path: Path, corpus: Path, steps: int) -> str:
    """Truncation vs uniform vs importance dropping at 1/3 and 1/2 of the layers: distortion and KS accuracy."""
    from .checkpoints import load_model, save_model
    from .analysis.layer_choice import compare_drop_strategies, drop_layers
    from .analysis.probes import load_audio_sample

    model = load_model(model_path)
    audio = load_audio_sample(corpus / "wavs", max_files=16, max_seconds=4.0)
    rows = compare_drop_strategies(model, audio)
    lines = ["| dropped | K | strategy | layers dropped (0-based) | rel. L2 of final states | 1 - CKA | KS test acc. (%) |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        name = f"{r['strategy']}_{r['k']}"
        path = out / "layers" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_model(drop_layers(model, r["dropped"]), path)
        acc = keyword_spotting(out, corpus, path, name, steps)
        lines.append(f"| {r['fraction']:.2f} | {r['k']} | {r['strategy']} | {', '.join(map(str, r['dropped']))} "
                     f"| {r['rel_l2']:.4f} | {r['one_minus_cka']:.4f} | {acc:.2f} |")
    return "\n".join(lines) + "\n"


def run_demo(out: str = "demo_out", quick: bool = False, layers: bool = False, family: str = "wavlm") -> int:
    out = Path(out).resolve()  # s3prl's runner works from its own directory
    out.mkdir(parents=True, exist_ok=True)
    n = 9 if layers else 8
    t0 = _step(f"1/{n} corpus: synthesized speech with espeak-ng")
    manifest = make_corpus(out)
    _step(f"2/{n} a teacher that knows speech: the tiny random {family} model, pre-trained HuBERT-style on the corpus")
    random_path, pretrained_path, pretraining = pretrain_teacher(out, manifest, quick, family)
    _step(f"3/{n} distil and prune the student")
    run_dir = prune(out, manifest, quick, family, teacher=pretrained_path)
    _step(f"4/{n} export the compact model, and the baseline: the teacher pruned by magnitude to the same size")
    model_path, teacher_path, summary = export_models(out, run_dir)
    magnitude_path = magnitude_baseline(out, model_path, teacher_path)
    print(f"wrote {model_path} (sparsity {summary['sparsity']:.4f}, target {summary['target_sparsity']}) "
          f"and {magnitude_path}")
    close = closeness(manifest.parent, teacher_path,
                      {"random": random_path, "pruned": model_path, "magnitude": magnitude_path})
    print("distance of the last hidden state to the teacher's: " + json.dumps(close))
    _step(f"5/{n} bench against the teacher, and at WavLM Base size")
    speed = bench(model_path, teacher_path, quick)
    base = base_size_bench(quick)
    print(json.dumps({"demo": speed, "base_size": base}))
    _step(f"6/{n} plots")
    from .plots import plot_run

    plot_run(run_dir)
    plots = sorted((run_dir / "plots").glob("*.png"))
    _step(f"7/{n} SUPERB through s3prl's runner (small data): ten tasks for teacher and pruned model, "
          "and what pruning keeps, against the random teacher and the magnitude baseline")
    from .demo_superb import ten_tasks

    superb = ten_tasks(out, {"teacher": teacher_path, "pruned": model_path}, quick,
                       compare={"random": random_path, "magnitude": magnitude_path})
    table = None
    if layers:
        _step(f"8/{n} layers on demand: truncation vs uniform vs importance")
        table = layer_study(out, model_path, manifest.parent, 20 if quick else 200)
    _step(f"{n}/{n} report")
    from .demo_report import write_report

    report = write_report(out, summary, speed, base, superb, plots, quick, table, time.perf_counter() - t0,
                          family, pretraining, close)
    print(f"\nreport: {report}  ({time.perf_counter() - t0:.0f} s in all)")
    return 0
