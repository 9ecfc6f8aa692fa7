"""`pruned-upstream`: the only place that parses arguments.

Each subcommand hands its parsed arguments to a function of the package; any
error a user can cause (a bad file, a bad value) is printed as one line and the
command exits non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out, quick=args.quick, layers=args.layers, family=args.family)


def _cmd_inspect(args) -> int:
    from .commands.inspect_model import inspect_command

    return inspect_command(args.model, png=args.png)


def _cmd_score(args) -> int:
    from .commands.score import run_score

    return run_score(args.results, args.convention, args.json, args.allow_missing, args.plot)


def _cmd_superb(args) -> int:
    from .s3prl_plugin.runner import run_superb

    return run_superb(args.runner_args)


def _cmd_superb_all(args) -> int:
    from .commands.superb_all import superb_all_command

    return superb_all_command(args.script_args)


def _cmd_superb_step(args) -> int:
    from .commands import superb_steps as steps

    if args.step == "sd-score":
        return steps.sd_score(args.expdir, args.test_dir, args.jobs)
    if args.step == "qbe":
        return steps.qbe(args.ckpt, args.dataset_root, args.out, args.layers, args.override, args.scorer)
    if args.step == "mtwv":
        return steps.mtwv(args.expdir, args.groundtruth, args.default_score)
    if args.step == "dscore":
        return steps.dscore(args.dscore_args)
    return steps.dscore_root()


def _cmd_submit(args) -> int:
    from .commands.submit import submit_command

    return submit_command(args.results_dir, args.out, args.allow_missing, args.upstream, args.run_dir,
                          check_s3prl=args.check_s3prl)


def _cmd_prune(args) -> int:
    from .training.run import run_prune

    return run_prune(args.config, args.overrides, args.out, resume=args.resume)


def _cmd_export(args) -> int:
    from .commands.export import export_command

    return export_command(args.source, args.out, drop_layers=args.drop_layers, audio_dir=args.audio,
                          magnitude_like=args.magnitude_like)


def _cmd_bench(args) -> int:
    from .commands.bench import bench_command

    return bench_command(args)


def _cmd_analyze(args) -> int:
    from .commands.analyze import analyze_command

    return analyze_command(args)


def _cmd_register(args) -> int:
    from .s3prl_plugin.register import register_s3prl, unregister_s3prl

    changed = (unregister_s3prl if args.remove else register_s3prl)(args.checkout)
    print("\n".join(f"{'removed' if args.remove else 'wrote'} {p}" for p in changed) or "nothing to change")
    return 0


def _cmd_plot(args) -> int:
    from .plots import plot_run

    return plot_run(args.run_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pruned-upstream",
        description="Distil and prune WavLM into a compact s3prl upstream, and score it on SUPERB.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("demo", help="the embedded default, end to end (no download, CPU)")
    s.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    s.add_argument("--quick", action="store_true", help="a shorter run (for tests)")
    s.add_argument("--layers", action="store_true", help="also compare layer-dropping strategies")
    s.add_argument("--family", choices=("wavlm", "hubert", "wav2vec2"), default="wavlm",
                   help="the tiny random teacher's family (default: wavlm)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("prune", help="distil and prune a student (the paper's method)")
    from .config_files import CONFIG_DIR

    named = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    s.add_argument("--config", help=f"a named config ({named}) or a YAML "
                   "file; needed to start a run, not to --resume one (its saved config.yaml is used)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    s.set_defaults(func=_cmd_prune)

    s = sub.add_parser("export", help="a run (its student) or a model file -> compact model.safetensors")
    s.add_argument("source", help="a run directory or one of its checkpoints (the student is exported), "
                   "or a model file or Hugging Face directory (with --drop-layers)")
    s.add_argument("--out", required=True, help="output .safetensors")
    s.add_argument("--drop-layers", default=None, help="0-based layers: 3,7 | top:K | uniform:K | importance:K")
    s.add_argument("--audio", help="audio directory for --drop-layers importance:K")
    s.add_argument("--magnitude-like", metavar="PRUNED", help="SOURCE a dense model: keep its weights by magnitude "
                   "at exactly PRUNED's counts (the baseline without distillation, docs/baselines.md)")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("bench", help="parameters, MACs and speed against a reference")
    s.add_argument("model", nargs="?", help="a model file (any format load_model reads)")
    s.add_argument("--ref", help="reference model (default: the dense model of the same family)")
    s.add_argument("--synthetic-sparsity", type=float, help="build a WavLM Base pruned to this sparsity")
    s.add_argument("--cnn", action="store_true", help="with --synthetic-sparsity: prune CNN channels too")
    s.add_argument("--superb-macs", metavar="DIR", help="count MACs over LibriSpeech test-clean the leaderboard's way")
    s.add_argument("--seconds", type=float, default=10.0, help="audio length for the speed test")
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--device", default="cpu")
    s.add_argument("--batch", type=int, default=1, help="utterances per forward, 40-100 %% of --seconds, padded")
    s.add_argument("--compile", action="store_true", help="time both models under torch.compile")
    s.add_argument("--profile", action="store_true", help="also print the torch profiler's top ops of MODEL")
    s.add_argument("--json", action="store_true", help="print one JSON line")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("inspect", help="the kept structure of a model, per layer")
    s.add_argument("model")
    s.add_argument("--png", help="save kept parameters per layer (the paper's Figure 3b) here")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("analyze", help="which layers matter: CKA/SVCCA, drop and re-init effects (docs/layers.md)")
    s.add_argument("model")
    s.add_argument("--audio", required=True, help="a directory of audio files")
    s.add_argument("--teacher", help="teacher model: adds student-vs-teacher similarity")
    s.add_argument("--out", required=True, help="output directory (Markdown table + PNG heatmaps)")
    s.add_argument("--svcca", action="store_true", help="SVCCA besides linear CKA")
    s.add_argument("--max-files", type=int, default=16)
    s.add_argument("--max-seconds", type=float, default=8.0)
    s.set_defaults(func=_cmd_analyze)

    s = sub.add_parser("register-s3prl", help="write our upstream into an s3prl source checkout (reversible)")
    s.add_argument("checkout", help="the s3prl repository checkout (the folder holding s3prl/)")
    s.add_argument("--remove", action="store_true", help="undo a previous registration")
    s.set_defaults(func=_cmd_register)

    s = sub.add_parser("plot", help="mask trajectories and kept parameters of a run directory")
    s.add_argument("run_dir")
    s.set_defaults(func=_cmd_plot)

    s = sub.add_parser("score", help="SUPERB score of results (CSV or s3prl experiment dirs)")
    s.add_argument("results")
    s.add_argument("--convention", choices=["paper", "leaderboard"], default="paper")
    s.add_argument("--json", action="store_true")
    s.add_argument("--allow-missing", action="store_true", help="score the tasks present; mark the score partial")
    s.add_argument("--plot", help="save score vs parameters (the paper's Figure 2) as this PNG")
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser(
        "superb",
        help="s3prl's downstream runner with our upstream registered",
        description="Everything after `superb` goes to s3prl's run_downstream, e.g. "
        "-m train -u pruned_wavlm_local -k model.safetensors -d speech_commands -p EXP",
    )
    s.add_argument("runner_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_superb)

    s = sub.add_parser(
        "superb-all",
        help="the ten SUPERB tasks for one upstream, then the score (scripts/run_superb.sh)",
        description="[--jobs N [--gpus 0,1,...] [--slurm]] UPSTREAM_CKPT OUT_DIR [TASK ...]; data roots from environment "
                    "variables (scripts/README.md). --jobs N: the tasks, ER folds and QbE layers as units, N at a "
                    "time (one GPU each: --gpus, else CUDA_VISIBLE_DEVICES or nvidia-smi -L), logs in "
                    "OUT_DIR/logs/, then the score; --slurm --jobs N: the units as SLURM job arrays (one per resource class), then a score job",
    )
    s.add_argument("script_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_superb_all)

    s = sub.add_parser("submit", help="the leaderboard's predict.zip and a model card from superb-all's results")
    s.add_argument("results_dir", help="OUT_DIR of superb-all")
    s.add_argument("--out", help="where predict.zip and model_card.* go (default RESULTS_DIR/submission)")
    s.add_argument("--allow-missing", action="store_true", help="pack the entries present; list those left out")
    s.add_argument("--upstream", help="the upstream file (default: the expdirs' upstream_ckpt)")
    s.add_argument("--run-dir", help="the pruning run directory: its config.yaml and teacher go into the card")
    s.add_argument("--check-s3prl", action="store_true",
                   help="run s3prl's own submit.py on the card's directories and compare the zips (source tree needed)")
    s.set_defaults(func=_cmd_submit)
    _add_superb_steps(sub)
    return p


def _add_superb_steps(sub) -> None:
    s = sub.add_parser("superb-step", help="a scoring step of SD, QbE (the ten-task script chains them)")
    steps = s.add_subparsers(dest="step", metavar="STEP", required=True)
    t = steps.add_parser("sd-score", help="s3prl's diarization score.sh grid with dscore: the lowest DER")
    t.add_argument("expdir", help="the expdir of -m evaluate -t test (holds scoring/predictions/*.h5)")
    t.add_argument("test_dir", help="the Kaldi-style test directory (holds rttm)")
    t.add_argument("--jobs", type=int, default=2, help="grid points scored at once")
    t = steps.add_parser("qbe", help="DTW per layer on dev and test; the best dev layer's test MTWV")
    t.add_argument("ckpt", help="upstream checkpoint (-k)")
    t.add_argument("dataset_root", help="quesst14Database (QUESST14_ROOT)")
    t.add_argument("out", help="directory of the QbE_<split>_layer<L> expdirs")
    t.add_argument("--layers", help="comma-separated layer indices (default: every hidden state)")
    t.add_argument("--override", default="", help="extra s3prl -o items for every run")
    t.add_argument("--scorer", choices=("auto", "official", "ours"), default="auto")
    t = steps.add_parser("mtwv", help="our QUESST 2014 TWV/MTWV of one quesst14_dtw expdir")
    t.add_argument("expdir", help="holds benchmark.stdlist.xml")
    t.add_argument("groundtruth", help="e.g. QUESST14_ROOT/scoring/groundtruth_quesst14_dev")
    t.add_argument("default_score", nargs="?", type=float, default=-10.0,
                   help="score of trials missing from the system output (default -10, as SUPERB's call)")
    t = steps.add_parser("dscore", help="dscore's score.py, unchanged (DSCORE_ROOT: a clone or a .tar.gz)")
    t.add_argument("dscore_args", nargs=argparse.REMAINDER)
    steps.add_parser("dscore-root", help="print where dscore is (unpacking a .tar.gz DSCORE_ROOT once)")
    s.set_defaults(func=_cmd_superb_step)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = argv[:1] in (["-v"], ["--verbose"])
    rest = argv[1:] if verbose else argv
    # Options of another program (s3prl's runner, the script, dscore) start with "-", which argparse's
    # REMAINDER cannot take first: they are passed on untouched.
    if rest[:1] == ["superb"] and rest[1:2] not in (["-h"], ["--help"]):
        args = argparse.Namespace(command="superb", runner_args=rest[1:], verbose=verbose, func=_cmd_superb)
    elif rest[:1] == ["superb-all"] and rest[1:2] not in (["-h"], ["--help"]):
        args = argparse.Namespace(command="superb-all", script_args=rest[1:], verbose=verbose, func=_cmd_superb_all)
    elif rest[:2] == ["superb-step", "dscore"] and rest[2:3] not in (["-h"], ["--help"]):
        args = argparse.Namespace(command="superb-step", step="dscore", dscore_args=rest[2:], verbose=verbose,
                                  func=_cmd_superb_step)
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pruned-upstream: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        if args.verbose:
            raise
        print(f"pruned-upstream {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except MemoryError as err:  # a file or a value asked for more memory than there is: one line too
        if args.verbose:
            raise
        detail = f" ({_one_line(err)})" if str(err) else ""
        print(f"pruned-upstream {args.command}: error: out of memory{detail}; nothing more was done",
              file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """The error's message on one line (a message may quote a file's text, newlines included)."""
    return " ".join(str(err).split("\n")).strip() or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
