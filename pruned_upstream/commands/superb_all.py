"""`pruned-upstream superb-all [--jobs N [--gpus 0,1] [--slurm]] CKPT OUT_DIR [TASK ...]`: ten tasks, then the score.

Without --jobs: the shipped `run_superb.sh` (scripts/README.md), one task after
another, with this installation's command line, so that it works from a wheel
as from a source checkout. With --jobs N: the tasks, ER folds, QbE layers and
ASV checkpoint tests as units, N at a time, then one scoring step
(superb_jobs.py); with --slurm too, as one SLURM job array (superb_slurm.py).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from ..shipped import shipped_dir

USAGE = "superb-all [--jobs N] [--gpus 0,1,...] [--slurm] UPSTREAM_CKPT OUT_DIR [TASK ...]"


def split_options(args: list[str]) -> tuple[int | None, str | None, bool, list[str]]:
    """--jobs, --gpus and --slurm (before `--`, anywhere among the arguments) apart from the script's."""
    jobs, gpus, slurm, rest, i = None, None, False, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i + 1:]
            break
        name, eq, value = arg.partition("=")
        if arg == "--slurm":
            slurm = True
        elif name in ("--jobs", "--gpus"):
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"{name} needs a value ({USAGE})")
                i, value = i + 1, args[i + 1]
            if name == "--jobs":
                if not value.isdigit() or int(value) < 1:
                    raise ValueError(f"--jobs '{value}' is not a positive integer")
                jobs = int(value)
            else:
                gpus = value
        else:
            rest.append(arg)
        i += 1
    if (gpus is not None or slurm) and jobs is None:
        raise ValueError(f"{'--gpus' if gpus is not None else '--slurm'} needs --jobs N (how many units at a time)")
    if gpus is not None and slurm:
        raise ValueError("--gpus and --slurm: SLURM gives each unit its GPU (SBATCH_GRES=gpu:1)")
    return jobs, gpus, slurm, rest


def superb_all_command(script_args: list[str]) -> int:
    script = shipped_dir("scripts") / "run_superb.sh"
    env = dict(os.environ)
    env.setdefault("PRUNED_UPSTREAM", f"{shlex.quote(sys.executable)} -m pruned_upstream.cli")
    jobs, gpus, slurm, rest = split_options(script_args)
    if jobs is None:
        return subprocess.run(["bash", str(script), *rest], env=env, stdin=subprocess.DEVNULL).returncode
    if len(rest) < 2:
        raise ValueError(f"usage: {USAGE}")
    from .superb_jobs import run_jobs

    return run_jobs(script, rest[0], rest[1], rest[2:], jobs, gpus, env, slurm=slurm)
