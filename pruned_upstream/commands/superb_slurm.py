"""`superb-all --slurm --jobs N`: the units of superb_jobs.py as one SLURM job array, then the score.

Two batch scripts are written into OUT/slurm/: `units.sh`, whose array task K
runs unit K (`run_superb.sh CKPT OUT TASK` with the unit's variables and
`SUPERB_PART=tasks`, output appended to OUT/logs/UNIT.log), and `score.sh`
(`SUPERB_PART=score`, into OUT/logs/score.log). They are submitted with
`sbatch --array=0-(U-1)%N` and `sbatch --dependency=afterany:<array job>`, so
the score runs once every unit has ended, failed or not. sbatch passes the
submitting environment on (its default `--export=ALL`), data variables
included; the cluster's own options come from sbatch's input variables
(SBATCH_PARTITION, SBATCH_GRES=gpu:1 for one GPU per unit, SBATCH_TIMELIMIT).
ASV stays one unit here (training, then every checkpoint's test): the
checkpoints are known only once it has trained. Standard library only.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

HEADER = "#!/usr/bin/env bash\n# Written by `pruned-upstream superb-all --slurm` (pruned_upstream/commands/superb_slurm.py).\n"


def units_script(script: Path, ckpt: str, out: Path, units: list) -> str:
    """The array job: task K runs units[K] (superb_jobs.Unit: name, task, env); every path and value quoted."""
    q = shlex.quote
    lines = [HEADER + "set -eu", 'case "${SLURM_ARRAY_TASK_ID:?run this as a SLURM array task}" in']
    for k, unit in enumerate(units):
        assigns = " ".join(f"{name}={q(value)}" for name, value in {**unit.env, "SUPERB_PART": "tasks"}.items())
        lines.append(f"    {k}) export {assigns}; unit={q(unit.name)}; task={q(unit.task)} ;;")
    lines += ['    *) echo "superb-all: no unit $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac",
              f"log={q(str(out / 'logs'))}/$unit.log",
              '[[ ! -L $log ]] || { echo "superb-all: $log is a symlink: not written" >&2; exit 2; }',
              'echo "===== superb-all unit $unit, SLURM job ${SLURM_JOB_ID:-?}, $(date \'+%F %T\')" >> "$log"',
              f'exec bash {q(str(script))} {q(ckpt)} {q(str(out))} "$task" >> "$log" 2>&1', ""]
    return "\n".join(lines)


def score_script(script: Path, ckpt: str, out: Path, tasks: list[str], qbe_layers: str | None) -> str:
    q = shlex.quote
    layers = f"QBE_LAYERS={q(qbe_layers)} " if qbe_layers else ""
    return (HEADER + "set -eu\n"
            f"{layers}SUPERB_PART=score exec bash {q(str(script))} {q(ckpt)} {q(str(out))} "
            f"{' '.join(q(t) for t in tasks)} >> {q(str(out / 'logs' / 'score.log'))} 2>&1\n")


def sbatch(args: list[str], env: dict) -> str:
    """Submit; the job id sbatch --parsable prints ("ID" or "ID;CLUSTER")."""
    proc = subprocess.run(["sbatch", "--parsable", *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    job = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not re.fullmatch(r"[0-9]+", job):
        raise RuntimeError(f"sbatch {' '.join(args)} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[:500]}")
    return job


def submit(script: Path, ckpt: str, out: Path, tasks: list[str], units: list, jobs: int,
           qbe_layers: str | None, env: dict, say=print) -> int:
    where = out / "slurm"
    if "%" in str(out):  # sbatch reads %A, %j ... in --output as its own patterns
        raise ValueError(f"OUT_DIR '{out}' holds a '%': sbatch would read it as a pattern in the log names")
    for sub in (where, out / "logs"):
        if sub.is_symlink():
            raise ValueError(f"{sub} is a symlink: superb-all --slurm writes only into a real directory")
        sub.mkdir(parents=True, exist_ok=True)
    (where / "units.sh").write_text(units_script(script, ckpt, out, units))
    (where / "score.sh").write_text(score_script(script, ckpt, out, tasks, qbe_layers))
    array = sbatch([f"--array=0-{len(units) - 1}%{jobs}", "--job-name=superb-units",
                    f"--output={where}/slurm-%A_%a.out", str(where / "units.sh")], env)
    score = sbatch([f"--dependency=afterany:{array}", "--job-name=superb-score",
                    f"--output={where}/slurm-%j.out", str(where / "score.sh")], env)
    for k, unit in enumerate(units):
        say(f"[superb-all] array task {k}: {unit.name} (log {out / 'logs' / unit.name}.log)")
    say(f"[superb-all] submitted job array {array} ({len(units)} units, {jobs} at a time) and the score job "
        f"{score} (after the array; log {out / 'logs' / 'score.log'}). Rerun the same command to resubmit: "
        "finished units end at once", flush=True)
    return 0
