"""`superb-all --jobs N`: the independent units of a SUPERB evaluation, N at a time.

A unit is one `run_superb.sh CKPT OUT TASK` process: a task, or one ER fold
(`ER_FOLDS=foldK`), or one QbE layer (`QBE_LAYERS=L`, its dev and test DTW and
their MTWV), or ASV's training (`ASV_TEST=none`), after which the test of each
checkpoint it saved is a unit (`ASV_TEST=states-N`). Units run with `SUPERB_PART=tasks` (the script runs, it does not
score: concurrent scorings would race on OUT/scored). Once every unit has
ended, one `SUPERB_PART=score` run of the script scores the tasks that are
complete, exactly as the sequential run's last step does, and runs nothing.

Each unit writes to OUT/logs/UNIT.log (appended: a rerun keeps the earlier
run's output above its own), starts and ends with one line and its time, and
a unit that fails does not stop the others. A rerun starts every unit again;
the script skips what is done ("result present, skipped"), so only what is
missing or failed does any work. On GPUs each running unit gets one GPU of its
own through CUDA_VISIBLE_DEVICES. Standard library only (no torch): the layer
count QbE needs, when QBE_LAYERS is unset, is asked of a subprocess.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

ALL_TASKS = ("PR", "KS", "IC", "SID", "ER", "ASR", "QbE", "SF", "ASV", "SD")  # scripts/run_superb.sh's order
# Units start longest first, so that a long one does not start last and run alone: training steps of
# downstream_configs/*.yaml (ASV 200k plus a test of each of its ten saved checkpoints; ASR, SF, SID, KS,
# IC 200k; PR 100k; SD 30k plus its scoring grid; each ER fold 30k); QbE has no training.
LONGEST_FIRST = ("ASV", "ASR", "SF", "SID", "KS", "IC", "PR", "SD", "ER", "QbE")
DEFAULT_FOLDS = ("fold1", "fold2", "fold3", "fold4", "fold5")
COUNT_LAYERS = ("import sys, torch\nfrom pruned_upstream.s3prl_plugin.expert import UpstreamExpert\n"
                "with torch.no_grad():\n"
                "    print(len(UpstreamExpert(sys.argv[1]).eval()([torch.zeros(16000)])['hidden_states']))\n")


@dataclass(frozen=True)
class Unit:
    name: str  # also its log's name: PR, ER_fold3, QbE_layer0
    task: str
    env: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Outcome:
    unit: Unit
    code: int
    seconds: float
    log: Path
    state: str  # "ran", "already complete", "skipped (data not set)", "FAILED"


def canonical_tasks(requested: list[str]) -> list[str]:
    """The script's task names, case-insensitive, in the order given (all ten when none)."""
    by_upper = {t.upper(): t for t in ALL_TASKS}
    out = []
    for name in requested or ALL_TASKS:
        if name.upper() not in by_upper:
            raise ValueError(f"unknown task '{name}'; known: {' '.join(ALL_TASKS)}")
        if by_upper[name.upper()] not in out:
            out.append(by_upper[name.upper()])
    return out


def parse_layers(text: str) -> list[str]:
    layers = text.replace(",", " ").split()
    if not layers or not all(re.fullmatch(r"[0-9]+", x) for x in layers):
        raise ValueError(f"QBE_LAYERS='{text}' is not a list of layer numbers (0,1,2)")
    return layers


def plan_units(tasks: list[str], er_folds: list[str], qbe_layers: list[str] | None,
               split_asv: bool = True) -> list[Unit]:
    """The units of ``tasks``: ER split into folds, QbE into layers (when the layers are known), ASV's training
    apart from its tests (``split_asv``)."""
    units = []
    for task in tasks:
        if task == "ER":
            units += [Unit(f"ER_{fold}", "ER", {"ER_FOLDS": fold}) for fold in er_folds]
        elif task == "ASV" and split_asv:  # training first; asv_units adds one unit per saved checkpoint's test
            units.append(Unit("ASV", "ASV", {"ASV_TEST": "none"}))
        elif task == "QbE" and qbe_layers:
            units += [Unit(f"QbE_layer{layer}", "QbE", {"QBE_LAYERS": layer}) for layer in qbe_layers]
        else:
            units.append(Unit(task, task))
    return units


def asv_units(expdir: Path) -> list[Unit]:
    """One unit per checkpoint the script tests (its asv_ckpts: states-N with N a multiple of 20000, as
    s3prl's sv_voxceleb1/test_expdir.sh; a shorter run with none of those: every states-N)."""
    steps = sorted(int(m.group(1)) for p in (expdir.iterdir() if expdir.is_dir() else ())
                   if (m := re.fullmatch(r"states-([0-9]+)\.ckpt", p.name)))
    chosen = [n for n in steps if n % 20000 == 0] or steps
    return [Unit(f"ASV_states-{n}", "ASV", {"ASV_TEST": f"states-{n}"}) for n in chosen]


def longest_first(units: list[Unit]) -> list[Unit]:
    return sorted(units, key=lambda unit: LONGEST_FIRST.index(unit.task))  # stable: folds and layers in order


def detect_gpus(spec: str | None, environ: dict, nvidia_smi: str | None = None) -> list[str]:
    """The GPUs units may use: ``--gpus 0,1``, else CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`; [] on CPU."""
    if spec is not None:
        gpus = [g.strip() for g in spec.split(",") if g.strip()]
        if not gpus or not all(re.fullmatch(r"[0-9]+|(GPU|MIG)-[0-9A-Za-z/-]+", g) for g in gpus):
            raise ValueError(f"--gpus '{spec}' is not a list of GPU indices or UUIDs (0,1,2)")
        return gpus
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # set, even empty ("no GPU") or -1: it is the user's choice
        return [g.strip() for g in visible.split(",") if g.strip() and not g.strip().startswith("-")]
    smi = nvidia_smi if nvidia_smi is not None else shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    if listed.returncode != 0:
        return []
    return [m.group(1) for line in listed.stdout.splitlines() if (m := re.match(r"GPU (\d+):", line))]


def unit_state(code: int, text: str) -> str:
    """What one unit's run did, from its exit status and what it wrote this time."""
    if code != 0:
        return "FAILED"
    if re.search(r"^\[run_superb\] \w+: start$", text, re.M):
        return "ran"
    if re.search(r"^\[run_superb\] skip \w+: data not set", text, re.M):
        return "skipped (data not set)"
    return "already complete"


class Scheduler:
    """Runs units N at a time, each with a GPU of its own when there are GPUs; prints one line per start/end."""

    def __init__(self, command: list[str], env: dict, log_dir: Path, jobs: int, gpus: list[str], say=print):
        if jobs < 1:
            raise ValueError(f"--jobs {jobs}: at least 1")
        if gpus and jobs > len(gpus):
            say(f"[superb-all] --jobs {jobs} but {len(gpus)} GPU(s): {len(gpus)} units at a time, one per GPU")
            jobs = len(gpus)
        self.command, self.env, self.log_dir, self.jobs, self.say = command, env, log_dir, jobs, say
        self.slots: queue.Queue = queue.Queue()
        for slot in (gpus or [None] * jobs)[:jobs]:
            self.slots.put(slot)
        self.lock = threading.Lock()
        self.clock = time.perf_counter()

    def line(self, text: str) -> None:
        with self.lock:
            self.say(f"[superb-all] {time.perf_counter() - self.clock:7.1f} s  {text}", flush=True)

    def run_one(self, unit: Unit) -> Outcome:
        gpu = self.slots.get()
        try:
            env = {**self.env, **unit.env}
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            log = self.log_dir / f"{unit.name}.log"
            self.line(f"start {unit.name}" + (f" on GPU {gpu}" if gpu is not None else "") + f" (log {log})")
            start = time.perf_counter()
            try:
                fd = open_log(log)
            except OSError as exc:  # e.g. a symlink planted as the log: the unit is not run
                self.line(f"end {unit.name}: FAILED, its log cannot be opened ({exc.strerror})")
                return Outcome(unit, 126, 0.0, log, "FAILED")
            with os.fdopen(fd, "ab") as sink:
                offset = sink.tell()
                sink.write(f"===== superb-all unit {unit.name}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
                sink.flush()
                try:
                    code = subprocess.run([*self.command, unit.task], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL).returncode
                except OSError as exc:
                    sink.write(f"superb-all: could not start: {exc}\n".encode())
                    code = 127
            seconds = time.perf_counter() - start
            with os.fdopen(os.open(log, os.O_RDONLY | os.O_NOFOLLOW), "rb") as read_back:
                read_back.seek(offset)
                text = read_back.read(8_000_000).decode("utf-8", "replace")
            state = unit_state(code, text)
            self.line(f"end {unit.name}: {state}" + (f" (exit {code})" if code else "") + f" in {seconds:.1f} s")
            return Outcome(unit, code, seconds, log, state)
        finally:
            self.slots.put(gpu)

    def run(self, units: list[Unit], after=None) -> list[Outcome]:
        """Every unit, and the units ``after(outcome)`` adds once a unit succeeded; outcomes in start order."""
        order: list[Unit] = []
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            pending = set()

            def submit(batch):
                for unit in batch:
                    order.append(unit)
                    pending.add(pool.submit(self.run_one, unit))

            submit(units)
            outcomes = {}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    outcomes[outcome.unit.name] = outcome
                    if after is not None and outcome.code == 0:
                        submit(after(outcome))
        return [outcomes[unit.name] for unit in order]


def open_log(path: Path) -> int:
    """A unit's log, opened to append without following a symlink (the run directory may be shared)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)


def count_layers(ckpt: str, env: dict) -> list[str] | None:
    """Every hidden state of the upstream (s3prl's -l numbers them from 0), as the script's count_layers."""
    python = env.get("PYTHON") or sys.executable
    proc = subprocess.run([python, "-c", COUNT_LAYERS, ckpt], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    text = proc.stdout.strip().splitlines()[-1:] if proc.returncode == 0 else []
    if not text or not text[0].isdigit():
        return None
    return [str(i) for i in range(int(text[0]))]


def run_jobs(script: Path, ckpt: str, out_dir: str, requested: list[str], jobs: int, gpus_spec: str | None,
             environ: dict, say=print, slurm=None) -> int:
    """The whole `superb-all --jobs N`: units in parallel, then the score; 0 when no unit failed. ``slurm``: a
    superb_slurm.SlurmOptions (or True for the defaults): submit the units as SLURM job arrays instead."""
    tasks = canonical_tasks(requested)
    if not (os.path.isfile(ckpt) or os.path.isdir(ckpt)):
        raise FileNotFoundError(f"upstream checkpoint '{ckpt}' does not exist")
    out = Path(os.path.abspath(out_dir))
    env = dict(environ)
    env.pop("SUPERB_PART", None)
    env.pop("ASV_TEST", None)
    folds = env.get("ER_FOLDS", " ".join(DEFAULT_FOLDS)).split()
    if not all(re.fullmatch(r"fold[1-5]", f) for f in folds):
        raise ValueError(f"ER_FOLDS: '{env['ER_FOLDS']}' is not fold1 .. fold5")
    layers = None
    if "QbE" in tasks and env.get("QUESST14_ROOT"):  # without the data the script skips QbE anyway
        if env.get("QBE_LAYERS"):
            layers = parse_layers(env["QBE_LAYERS"])
        else:
            layers = count_layers(os.path.abspath(ckpt), env)
            if layers is None:
                say("[superb-all] QbE: could not count the layers of the upstream; QbE runs as one unit")
        if layers:
            env["QBE_LAYERS"] = ",".join(layers)  # the score step checks exactly these layers
    if slurm:  # job arrays (superb_slurm.py); ASV stays one unit: its checkpoints come with its training
        from .superb_slurm import SlurmOptions, submit

        units = longest_first(plan_units(tasks, folds, layers, split_asv=False))
        options = slurm if isinstance(slurm, SlurmOptions) else SlurmOptions()
        return submit(script, os.path.abspath(ckpt), out, tasks, units, jobs, env.get("QBE_LAYERS"), env, say,
                      options)
    gpus = detect_gpus(gpus_spec, environ)
    log_dir = out / "logs"
    if log_dir.is_symlink():
        raise ValueError(f"{log_dir} is a symlink: superb-all writes its logs only into a real directory")
    log_dir.mkdir(parents=True, exist_ok=True)
    units = longest_first(plan_units(tasks, folds, layers))
    later = " (and one per ASV checkpoint once ASV has trained)" if "ASV" in tasks else ""
    where = f" on GPUs {','.join(gpus)}" if gpus else " on CPU"
    say(f"[superb-all] {len(units)} units{later}, {jobs} at a time{where}",
        flush=True)
    command = ["bash", str(script), ckpt, str(out)]
    scheduler = Scheduler(command, {**env, "SUPERB_PART": "tasks"}, log_dir, jobs, gpus, say)
    start = time.perf_counter()
    outcomes = scheduler.run(units, lambda done: asv_units(out / "ASV") if done.unit.name == "ASV" else [])
    scheduler.line("scoring the complete tasks")
    score = subprocess.run([*command, *tasks], env={**env, "SUPERB_PART": "score"}, stdin=subprocess.DEVNULL)
    failed = [o for o in outcomes if o.code != 0]
    say(f"[superb-all] {len(outcomes)} units in {time.perf_counter() - start:.1f} s: "
        f"{sum(o.state == 'ran' for o in outcomes)} ran, {sum(o.state == 'already complete' for o in outcomes)} "
        f"already complete, {len(failed)} failed", flush=True)
    for o in failed:
        say(f"[superb-all] FAILED {o.unit.name} (exit {o.code}): {o.log}", flush=True)
    if score.returncode != 0:
        say(f"[superb-all] the scoring step failed (exit {score.returncode})", flush=True)
    return 1 if failed or score.returncode != 0 else 0
