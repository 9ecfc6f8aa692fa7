"""`superb-all --slurm --jobs N`: the units of superb_jobs.py as SLURM job arrays, then the score.

Two batch scripts are written into OUT/slurm/: `units.sh UNIT ...`, whose
array task K runs the K-th unit named on its command line (`run_superb.sh CKPT
OUT TASK` with the unit's variables and `SUPERB_PART=tasks`, output appended to
OUT/logs/UNIT.log), and `score.sh` (`SUPERB_PART=score`, into
OUT/logs/score.log).

Resources. One array has one resource request, so the units go in as one array
per *resource class*: the tasks whose row of the resources table
(downstream_configs/slurm_resources.yaml, or `--slurm-resources FILE`) is the
same share an array, `sbatch --array=0-(U-1)%N` with that row's
`--gres=gpu:G --cpus-per-task --mem --time`. Each array element so gets its
task's resources, and there are as few arrays as distinct rows (a table
whose rows are all the same gives one array). N at a time holds within each
array. The score job (its own row, `score`) waits for every array
(`--dependency=afterany:A1:A2...`), failed or not.

Site options. `--slurm-args "..."` (shlex-split) go to every sbatch, before
ours: partition, account, qos, constraint, mail... Options our scripts or the
table own are refused in one line: --array, --dependency, --output, --error,
--parsable, --wrap, --export (the units need the data variables sbatch passes
on by default), --wait, the resource options of the table, and any option
that does not submit.

Resubmitting. Before submitting, each unit is asked of the script itself
(`DRY_RUN=1 SUPERB_PART=score`, which reads the results and runs nothing):
a unit whose result is present is not submitted again. So rerunning the same
command resubmits exactly the units that failed or never ran. A rerun while
jobs of the previous submission (OUT/slurm/jobs) are still queued or running
is refused. `--dry-run` prints the scripts and the sbatch command lines and
submits nothing. Standard library and the small-file reader only (no torch).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..shipped import shipped_dir
from ..small_files import read_small_text, read_yaml_file

HEADER = "#!/usr/bin/env bash\n# Written by `pruned-upstream superb-all --slurm` (pruned_upstream/commands/superb_slurm.py).\n"
RESOURCES_FILE = "slurm_resources.yaml"
FIELDS = ("gpus", "cpus", "mem", "time")
MEM = re.compile(r"[1-9][0-9]*[KMGT]")
TIME = re.compile(r"([0-9]+-)?[0-9]+(:[0-5][0-9]){0,2}")  # sbatch --time: MM, MM:SS, H:MM:SS, D-H, D-H:MM:SS
# Options of sbatch that our scripts, the resources table or the submission itself own (sbatch 22.05 --help).
OURS = {"array": "a", "dependency": "d", "output": "o", "error": "e", "parsable": None, "wrap": None,
        "export": None, "export-file": None, "wait": "W", "test-only": None, "help": "h", "usage": None,
        "version": "V", "cpus-per-task": "c", "mem": None, "mem-per-cpu": None, "mem-per-gpu": None,
        "gres": None, "gpus": "G", "gpus-per-node": None, "gpus-per-task": None, "gpus-per-socket": None,
        "cpus-per-gpu": None, "time": "t"}
# sbatch options that take no value (any other option takes one, as `--opt=V`, `--opt V`, `-xV` or `-x V`).
FLAG_LONG = {"hold", "ignore-pbs", "no-kill", "no-requeue", "overcommit", "quiet", "reboot", "requeue",
             "oversubscribe", "spread-job", "use-min-nodes", "verbose", "contiguous", "get-user-env", "exclusive",
             "nice", "propagate"}
FLAG_SHORT = set("HkOQsv")
FLAGS_OURS = {"parsable", "wait", "test-only", "help", "usage", "version"}


@dataclass(frozen=True)
class Resources:
    gpus: int
    cpus: int
    mem: str
    time: str

    def sbatch_args(self) -> list[str]:
        gres = [f"--gres=gpu:{self.gpus}"] if self.gpus else []
        return [*gres, f"--cpus-per-task={self.cpus}", f"--mem={self.mem}", f"--time={self.time}"]


@dataclass
class SlurmOptions:
    args: list[str] = field(default_factory=list)  # the site's sbatch options (site_args)
    resources: str | None = None                      # a resources table; None: the shipped one
    dry_run: bool = False


def load_resources(path: str | Path | None = None) -> dict[str, Resources]:
    """The resources table: task (and `score`) -> Resources; ValueError naming the file and the entry."""
    path = Path(path) if path is not None else shipped_dir("downstream_configs") / RESOURCES_FILE
    table = read_yaml_file(path)
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: expected a mapping of task -> {{{', '.join(FIELDS)}}}")
    out = {}
    for task, row in table.items():
        where = f"{path}: {task}"
        if not isinstance(row, dict) or set(row) != set(FIELDS):
            raise ValueError(f"{where}: expected exactly the keys {', '.join(FIELDS)}")
        gpus, cpus, mem, time = (row[k] for k in FIELDS)
        if type(gpus) is not int or gpus < 0 or type(cpus) is not int or cpus < 1:
            raise ValueError(f"{where}: gpus must be an integer >= 0 and cpus one >= 1")
        if not isinstance(mem, str) or not MEM.fullmatch(mem):
            raise ValueError(f"{where}: mem '{mem}' is not a size such as 16G (sbatch --mem)")
        if not isinstance(time, str) or not TIME.fullmatch(time):
            raise ValueError(f"{where}: time {time!r} is not a quoted sbatch time limit such as \"1-12:00:00\"")
        out[str(task)] = Resources(gpus, cpus, mem, time)
    return out


def site_args(text: str) -> list[str]:
    """`--slurm-args`: shlex-split; an option our scripts or the resources table own is refused in one line."""
    words = shlex.split(text)
    refused, expect_value = [], False
    for word in words:
        if not word.startswith("-") or word == "-":
            if not expect_value:
                raise ValueError(f"--slurm-args: '{word}' is not an option (sbatch would take it as the script)")
            expect_value = False
            continue
        expect_value = False
        if word.startswith("--"):
            name, eq, _ = word[2:].partition("=")
            # sbatch (getopt_long) accepts abbreviations: any prefix of one of ours is refused too
            hit = [o for o in OURS if o == name or (len(name) >= 2 and o.startswith(name))]
            if hit:
                refused.append(f"{word} (--{hit[0]})")
            expect_value = not eq and name not in FLAG_LONG and not (hit and hit[0] in FLAGS_OURS)
            continue
        for k, letter in enumerate(word[1:]):  # -Qp gpu: flags, then at most one option with its value
            mine = [o for o, short in OURS.items() if short == letter]
            if mine:
                refused.append(f"{word} (-{letter}, --{mine[0]})")
                expect_value = k == len(word) - 2 and mine[0] not in FLAGS_OURS
                break
            if letter not in FLAG_SHORT:
                expect_value = k == len(word) - 2  # the value is the next word
                break
    if refused:
        raise ValueError(f"--slurm-args: {', '.join(refused)}: superb-all sets these itself (resources: "
                         "downstream_configs/slurm_resources.yaml or --slurm-resources FILE)")
    if expect_value:
        raise ValueError(f"--slurm-args: '{words[-1]}' needs a value")
    return words


def units_script(script: Path, ckpt: str, out: Path, units: list) -> str:
    """The array job `units.sh UNIT ...`: array task K runs the K-th unit named (superb_jobs.Unit: name, task,
    env); every path and value quoted."""
    q = shlex.quote
    lines = [HEADER + "# Array task K runs the K-th unit of its arguments: sbatch --array=0-(U-1) units.sh UNIT ...",
             "set -eu", ': "${SLURM_ARRAY_TASK_ID:?run this as a SLURM array task}"',
             'unit=${@:$((SLURM_ARRAY_TASK_ID + 1)):1}', 'case "$unit" in']
    for unit in units:
        assigns = " ".join(f"{name}={q(value)}" for name, value in {**unit.env, "SUPERB_PART": "tasks"}.items())
        lines.append(f"    {q(unit.name)}) export {assigns}; task={q(unit.task)} ;;")
    lines += ['    *) echo "superb-all: no unit \'$unit\' (array task $SLURM_ARRAY_TASK_ID)" >&2; exit 2 ;;', "esac",
              f"log={q(str(out / 'logs'))}/$unit.log",
              '[[ ! -L $log ]] || { echo "superb-all: $log is a symlink: not written" >&2; exit 2; }',
              'echo "===== superb-all unit $unit, SLURM job ${SLURM_ARRAY_JOB_ID:-?}_$SLURM_ARRAY_TASK_ID on '
              '$(hostname), $(date \'+%F %T\')" >> "$log"',
              f'exec bash {q(str(script))} {q(ckpt)} {q(str(out))} "$task" >> "$log" 2>&1', ""]
    return "\n".join(lines)


def score_script(script: Path, ckpt: str, out: Path, tasks: list[str], qbe_layers: str | None) -> str:
    q = shlex.quote
    layers = f"QBE_LAYERS={q(qbe_layers)} " if qbe_layers else ""
    return (HEADER + "set -eu\n"
            f"{layers}SUPERB_PART=score exec bash {q(str(script))} {q(ckpt)} {q(str(out))} "
            f"{' '.join(q(t) for t in tasks)} >> {q(str(out / 'logs' / 'score.log'))} 2>&1\n")


def complete_units(script: Path, ckpt: str, out: Path, units: list, env: dict) -> set[str]:
    """The units whose result is present, as the script itself decides (DRY_RUN=1 SUPERB_PART=score: it reads
    the results, runs and writes nothing)."""
    if not out.is_dir():
        return set()
    done = set()
    for unit in units:
        probe = subprocess.run(["bash", str(script), ckpt, str(out), unit.task], capture_output=True, text=True,
                               env={**env, **unit.env, "SUPERB_PART": "score", "DRY_RUN": "1"},
                               stdin=subprocess.DEVNULL)
        if probe.returncode == 0 and re.search(rf"^\[run_superb\] {unit.task}: result present, skipped$",
                                               probe.stdout, re.M):
            done.add(unit.name)
    return done


def still_queued(jobs_file: Path, env: dict) -> list[str]:
    """The jobs of the previous submission (OUT/slurm/jobs) that squeue still lists (pending or running)."""
    if not jobs_file.is_file() or jobs_file.is_symlink():
        return []
    ours = set(read_small_text(jobs_file).split())
    proc = subprocess.run(["squeue", "--me", "--noheader", "--format=%F"], env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed (exit {proc.returncode}): {proc.stderr.strip()[:300]}")
    return sorted(ours & set(proc.stdout.split()), key=int)


def sbatch(args: list[str], env: dict) -> str:
    """Submit; the job id sbatch --parsable prints ("ID" or "ID;CLUSTER")."""
    proc = subprocess.run(["sbatch", "--parsable", *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    job = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not re.fullmatch(r"[0-9]+", job):
        raise RuntimeError(f"sbatch {shlex.join(args)} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[:500]}")
    return job


def resource_classes(units: list, table: dict[str, Resources], path) -> list[tuple[Resources, list]]:
    """The units grouped by their task's row, in the order of each class's first unit."""
    classes: dict[Resources, list] = {}
    for unit in units:
        if unit.task not in table:
            raise ValueError(f"{path or RESOURCES_FILE}: no row for {unit.task}")
        classes.setdefault(table[unit.task], []).append(unit)
    return list(classes.items())


def submit(script: Path, ckpt: str, out: Path, tasks: list[str], units: list, jobs: int,
           qbe_layers: str | None, env: dict, say=print, options: SlurmOptions | None = None) -> int:
    options = options or SlurmOptions()
    table = load_resources(options.resources)
    if "score" not in table:
        raise ValueError(f"{options.resources or RESOURCES_FILE}: no row for score (the score job)")
    classes = resource_classes(units, table, options.resources)
    where = out / "slurm"
    if "%" in str(out):  # sbatch reads %A, %j ... in --output as its own patterns
        raise ValueError(f"OUT_DIR '{out}' holds a '%': sbatch would read it as a pattern in the log names")
    for sub in (where, out / "logs"):
        if sub.is_symlink():
            raise ValueError(f"{sub} is a symlink: superb-all --slurm writes only into a real directory")
    queued = still_queued(where / "jobs", env)
    if queued:
        raise RuntimeError(f"jobs {' '.join(queued)} of the previous submission ({where / 'jobs'}) are still "
                           "queued or running: wait for them, or scancel them, then rerun")
    done = complete_units(script, ckpt, out, units, env)
    for name in sorted(done):
        say(f"[superb-all] {name}: complete, not submitted again")
    classes = [(res, [u for u in members if u.name not in done]) for res, members in classes]
    classes = [(res, members) for res, members in classes if members]
    texts = {"units.sh": units_script(script, ckpt, out, units),
             "score.sh": score_script(script, ckpt, out, tasks, qbe_layers)}
    arrays = []
    for res, members in classes:
        name = "superb-" + "+".join(dict.fromkeys(u.task for u in members))
        arrays.append((name, [*options.args, *res.sbatch_args(), f"--array=0-{len(members) - 1}%{jobs}",
                              f"--job-name={name}", f"--output={where}/slurm-%A_%a.out", str(where / "units.sh"),
                              *(u.name for u in members)]))
    score_args = [*options.args, *table["score"].sbatch_args(), "--job-name=superb-score",
                  f"--output={where}/slurm-%j.out", str(where / "score.sh")]
    if options.dry_run:
        for name, text in texts.items():
            say(f"[superb-all] dry run: {where / name} would hold:\n{text}")
        for k, (name, args) in enumerate(arrays, 1):  # a shell script: A1=$(sbatch ...), then the score after them
            say(f"[superb-all] dry run: A{k}=$(sbatch --parsable {shlex.join(args)})  # {name}")
        dep = f"--dependency=afterany:{':'.join(f'$A{k}' for k in range(1, len(arrays) + 1))} " if arrays else ""
        say(f"[superb-all] dry run: sbatch --parsable {dep}{shlex.join(score_args)}")
        say("[superb-all] dry run: nothing written, nothing submitted", flush=True)
        return 0
    for sub in (where, out / "logs"):
        sub.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (where / name).write_text(text)
    ids = []
    for (name, args), (res, members) in zip(arrays, classes):
        ids.append(sbatch(args, env))
        (where / "jobs").write_text("\n".join(ids) + "\n")  # at once: a later failure still leaves them known
        say(f"[superb-all] job array {ids[-1]} ({name}; {len(members)} units, {jobs} at a time; "
            f"{' '.join(res.sbatch_args())}):")
        for k, unit in enumerate(members):
            say(f"[superb-all]   array task {k}: {unit.name} (log {out / 'logs' / unit.name}.log)")
    dep = [f"--dependency=afterany:{':'.join(ids)}"] if ids else []
    score = sbatch([*dep, *score_args], env)
    (where / "jobs").write_text("\n".join([*ids, score]) + "\n")
    say(f"[superb-all] submitted {len(ids)} job array(s) and the score job {score} (after them; log "
        f"{out / 'logs' / 'score.log'}). Rerun the same command once they have ended: only the units that are "
        "not complete are submitted again", flush=True)
    return 0
