"""The demo's ten SUPERB tasks: small data in the real layouts, s3prl's runner for each upstream, the score.

    result = ten_tasks(out, {"teacher": teacher.safetensors, "pruned": model.safetensors}, quick=False)

The tasks run through the shipped `run_superb.sh` (the same script users run on
the real corpora) with the small data of `superb_data.bundle` and a reduced
protocol (`REDUCED`): few training steps, two QbE layers, two ASV checkpoints.
What the leaderboard's submission needs is run as SUPERB runs it: IEMOCAP's five
folds, ASV's lowest-EER checkpoint among those saved, ASR tested again with a
language model (the small data's word 3-gram, superb_data/arpa.py); the pruned
upstream's results end in `superb/pruned/submission/predict.zip` and its model
card (`pruned-upstream submit`, docs/submission.md). A task whose needs are
missing here (s3prl's source tree, dscore) is named with what would provide it,
and the others still run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .s3prl_plugin.third_party import configured_dscore
from .shipped import shipped_dir

TASKS = ("PR", "KS", "IC", "SID", "ER", "ASR", "QbE", "SF", "ASV", "SD")
# The classification tasks whose labels the small data makes learnable train longer, so that the
# teacher can show it is above chance (the settings of the runs in docs/superb_small_data.md).
LEARNABLE = {"KS": (1000, 1e-2, 64), "IC": (1000, 1e-2, 64), "SID": (300, 1e-2, None), "ER": (300, 1e-3, None)}
# Chance accuracy (%) of the small data's test sets: 1 / classes (docs/superb_small_data.md).
CHANCE = {"KS": 100 / 12, "IC": 100 / 10, "SID": 100 / 6, "ER": 100 / 4}
REDUCED = ("every task trains {steps} steps (SUPERB: 20k to 200k) except KS and IC (1000 steps, lr 1e-2, "
           "projector 64) and SID and ER (300 steps, lr 1e-2 and 1e-3); ER runs IEMOCAP's five folds, as "
           "SUPERB does; QbE runs the first and the last hidden state (SUPERB: every layer, "
           "the best by dev MTWV); ASV saves two checkpoints and keeps the lower test EER (SUPERB: every 20k "
           "steps, the lowest EER); ASR is tested without and with a language model (the small data's word "
           "3-gram; SUPERB: LibriSpeech's official 4-gram); SD scores s3prl's full score.sh grid; QbE uses our "
           "MTWV (no official scorer in small data)")
# What pruning keeps: the tasks on which the small data separates a teacher that knows speech from one
# that does not (SID, ER, SD do not at this size: docs/demo.md), cheap enough to repeat, for four
# upstreams (the random teacher, the pre-trained teacher, its pruned student, the magnitude baseline),
# each at two downstream seeds (s3prl's run_downstream.py --seed; 1337 is its default), and a third for
# the pair whose gap is within a test utterance or two (the pruned student against the magnitude
# baseline); more for all four would not fit the demo's 8 minutes (docs/demo.md, "Time").
COMPARED = ("KS", "IC")
SEEDS = (1337, 2)
MORE_SEEDS = {"pruned": (3,), "magnitude": (3,)}
PARALLEL = 2  # runs of run_superb.sh at a time (the fork server forks one child per command)
SUBMITTED = "pruned"  # the upstream whose results the demo packs as a leaderboard submission


@dataclasses.dataclass
class TenTasks:
    """What the demo reports: per upstream the score JSON row and metrics; tasks that could not run."""

    rows: dict[str, dict]  # upstream -> {"score", "points", "partial", "missing", "qbe_scorer"}
    metrics: dict[str, dict[str, float]]  # upstream -> metric -> value (references.METRICS units)
    unavailable: dict[str, str]  # task -> why, and how to get it
    seconds: dict[str, float]  # upstream -> wall time of its ten tasks
    protocol: str
    submission: Path | None = None  # superb/pruned/submission/model_card.md, when `submit` wrote one
    submission_note: str = ""  # what `submit` left out, or why it wrote nothing
    compared: dict[str, dict[int, dict[str, float]]] = dataclasses.field(default_factory=dict)  # name -> seed -> metrics


def unavailable_tasks(bundle) -> dict[str, str]:
    """Tasks whose preflight finds something missing (s3prl's source tree, packages, dscore), with remedies."""
    from .s3prl_plugin import preflight as pf

    root = pf.installed_s3prl_root()
    if root is None:
        return {task: "s3prl is not installed: pip install -e '.[superb]' (make install)" for task in TASKS}
    out = {}
    for task in TASKS:
        config = pf.effective_config(task, root, bundle.overrides.get(task), environ={**os.environ, **bundle.env})
        problems = pf.preflight(task, root, config)
        if problems:
            out[task] = pf.format_problems(problems, task).replace("\n", " ")
    if "SD" not in out and configured_dscore() is None:
        out["SD"] = ("SD's DER needs dscore: set DSCORE_ROOT to a clone of https://github.com/ftshijt/dscore "
                     "(or a .tar.gz of it) and run `make install` again")
    return out


@contextlib.contextmanager
def fork_server(out: Path):
    """commands/fork_server.py for the demo's runs: torch and s3prl imported once, not ~60 times.

    Yields the server's directory (PRUNED_UPSTREAM_FORK_SERVER): a new path that the server creates
    with mode 0700 inside a fresh private temporary directory, never a fixed shared name."""
    from .superb_data.bundle import FAST_ENV

    path = Path(tempfile.mkdtemp(prefix="pu-fork-")) / "server"
    log = open(out / "fork_server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pruned_upstream.commands.fork_server", str(path)],
                            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, **FAST_ENV})  # read by torch and joblib at import
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the fork server did not start: {out / 'fork_server.log'}")
        yield str(path)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(path.parent, ignore_errors=True)


def run_upstream(name: str, ckpt: Path, out: Path, bundle, tasks: list[str], qbe_layers: str,
                 server: str | None, quick: bool = False, seed: int | None = None) -> float:
    """scripts/run_superb.sh for one upstream on the small data; returns its wall time (s)."""
    from .superb_data.bundle import run_env

    for task, (steps, lr, projector) in ({} if quick else LEARNABLE).items():
        longer = [f"config.runner.{key}={steps}" for key in ("total_steps", "eval_step", "save_step")]
        longer += [f"config.optimizer.lr={lr}"]
        longer += [f"config.downstream_expert.modelrc.projector_dim={projector}"] if projector else []
        bundle = dataclasses.replace(bundle, overrides={**bundle.overrides,
                                                        task: ",,".join([bundle.overrides[task], *longer])})
    asv = [f"config.runner.save_step={max(1, bundle.steps // 2)}"]  # two checkpoints: a real lowest-EER choice
    bundle = dataclasses.replace(bundle, overrides={**bundle.overrides, "ASV": ",,".join([bundle.overrides["ASV"], *asv])})
    client = "pruned_upstream.commands.fork_client" if server else "pruned_upstream.cli"
    librispeech = bundle.root / "librispeech"
    env = run_env(bundle, {"PRUNED_UPSTREAM": f"{sys.executable} -m {client}", "PYTHON": sys.executable,
                           "MODEL_NAME": name, "ER_FOLDS": "fold1 fold2 fold3 fold4 fold5", "QBE_LAYERS": qbe_layers,
                           "ASR_KENLM_MODEL": str(librispeech / "lm.arpa"),
                           "ASR_LEXICON": str(librispeech / "lm_lexicon.txt")})
    if server:
        env["PRUNED_UPSTREAM_FORK_SERVER"] = server
    if seed is not None:
        env["SUPERB_SEED"] = str(seed)
    if configured_dscore():
        env["DSCORE_ROOT"] = configured_dscore()
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "run_superb.log", "a") as log:  # two runs at a time: each its own log, not the terminal
        proc = subprocess.run(["bash", str(shipped_dir("scripts") / "run_superb.sh"), str(ckpt), str(out), *tasks],
                              env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    print(f"demo: {name}{'' if seed is None else f' (seed {seed})'}: {', '.join(tasks)} in "
          f"{time.perf_counter() - start:.0f} s (log {out / 'run_superb.log'})", flush=True)
    if proc.returncode != 0:
        print(f"demo: some SUPERB task of the {name} upstream failed (exit {proc.returncode}); "
              f"the table shows what completed, {out}/run_superb.log says why", flush=True)
    return time.perf_counter() - start


def write_submission(results: Path, upstream: Path) -> tuple[Path | None, str]:
    """`pruned-upstream submit RESULTS --allow-missing --upstream CKPT`: predict.zip and the model card."""
    import io

    from .commands.submit import submit_command

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            code = submit_command(str(results), allow_missing=True, upstream=str(upstream))
    except (ValueError, OSError) as err:  # submission.Refused is a ValueError
        return None, f"no submission: {' '.join(str(err).split())}"
    left = [line for line in errors.getvalue().splitlines() if line.startswith("left out: ")]
    card = results / "submission" / "model_card.md"
    if code == 0 and card.is_file():  # s3prl's own submit.py on the card's directories, where installed
        from .s3prl_plugin.submit_check import check_with_s3prl_submit

        same, message = check_with_s3prl_submit(card.with_suffix(".json"))
        left.append(("checked: " if same else "NOT the same as s3prl's submit.py: " if same is False
                     else "not compared: ") + message)
        print(f"demo: submission {left[-1]}", flush=True)
    return (card if code == 0 and card.is_file() else None), "; ".join(left)


def hidden_states(ckpt: Path) -> int:
    from .checkpoints import load_model

    return load_model(ckpt).num_layers + 1


def _metrics(target: Path, name: str) -> dict[str, float]:
    from .superb.results import read_results

    view = target / "scored" / name
    models = read_results(view) if view.is_dir() else []
    return dict(models[0].metrics) if models else {}


def ten_tasks(out: Path, upstreams: dict[str, Path], quick: bool, compare: dict[str, Path] | None = None) -> TenTasks:
    """Every task for every upstream on the small data, scored in the paper's convention; then COMPARED's
    tasks for `upstreams` and `compare` together at every seed of SEEDS (quick: the first seed, KS only)."""
    from concurrent.futures import ThreadPoolExecutor

    from .superb.results import read_results
    from .superb.table import score_models, to_json
    from .superb_data.bundle import make_small_superb

    steps = 4 if quick else 40  # quick: no longer runs for the learnable tasks either
    bundle = make_small_superb(out / "superb_data", seed=0, steps=steps)
    unavailable = unavailable_tasks(bundle)
    for task, why in unavailable.items():
        print(f"demo: {task} cannot run here: {why}", flush=True)
    tasks = [t for t in TASKS if t not in unavailable]
    compared_tasks = [t for t in (COMPARED[:1] if quick else COMPARED) if t in tasks]
    seeds = SEEDS[:1] if quick else SEEDS
    every = {**upstreams, **(compare or {})}
    seeds_of = {name: seeds + (() if quick else MORE_SEEDS.get(name, ())) for name in every}
    runs = [(name, ckpt, out / "superb" / name, tasks, None) for name, ckpt in upstreams.items()]
    for seed in dict.fromkeys(s for name in every for s in seeds_of[name]):  # the ten-task runs: upstreams' first
        runs += [(name, ckpt, out / "superb" / "compare" / f"{name}_seed{seed}", compared_tasks, seed)
                 for name, ckpt in every.items() if compared_tasks and seed in seeds_of[name]
                 and (seed != SEEDS[0] or name not in upstreams)]
    rows, metrics, seconds = {}, {}, {}
    with fork_server(out) if tasks else contextlib.nullcontext() as server:
        def one(run):
            name, ckpt, target, run_tasks, seed = run
            qbe_layers = f"0,{hidden_states(ckpt) - 1}"
            return run_upstream(name, ckpt, target, bundle, run_tasks, qbe_layers, server, quick, seed)

        print(f"\n-- {len(runs)} runs of run_superb.sh, {PARALLEL} at a time: "
              + "; ".join(f"{r[0]}{'' if r[4] is None else f' seed {r[4]}'} ({', '.join(r[3])})" for r in runs),
              flush=True)
        with ThreadPoolExecutor(PARALLEL) as pool:
            times = list(pool.map(one, runs)) if tasks else [0.0] * len(runs)
    for run, secs in zip(runs, times):
        if run[4] is None:
            seconds[run[0]] = secs
    for name in upstreams:
        view = out / "superb" / name / "scored" / name
        models = read_results(view) if view.is_dir() else []
        if models:  # partial when a task is missing: the row says which
            rows[name] = json.loads(to_json(score_models(models, "paper", allow_missing=True)))[0]
            metrics[name] = dict(models[0].metrics)
    compared: dict[str, dict[int, dict[str, float]]] = {name: {} for name in every}
    for name in every:
        for seed in seeds_of[name]:
            if seed == SEEDS[0] and name in upstreams:
                got = metrics.get(name, {})
            else:
                got = _metrics(out / "superb" / "compare" / f"{name}_seed{seed}", name)
            compared[name][seed] = {t: v for t, v in got.items() if t in compared_tasks}
    (out / "superb_score.json").write_text(json.dumps(list(rows.values())) + "\n")
    (out / "superb_compare.json").write_text(json.dumps(compared, indent=1) + "\n")
    card, note = None, "no submission: the pruned upstream ran no task"
    if SUBMITTED in upstreams and (out / "superb" / SUBMITTED).is_dir():
        card, note = write_submission(out / "superb" / SUBMITTED, upstreams[SUBMITTED])
        print(f"demo: submission {card.parent / 'predict.zip' if card else '(none)'} {note}", flush=True)
    return TenTasks(rows, metrics, unavailable, seconds, REDUCED.format(steps=steps), card, note, compared)
