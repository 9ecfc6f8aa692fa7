"""`pruned-upstream superb-all [--jobs N [--gpus 0,1] [--slurm ...]] CKPT OUT_DIR [TASK ...]`: ten tasks, then the score.

Without --jobs: the shipped `run_superb.sh` (scripts/README.md), one task after
another, with this installation's command line, so that it works from a wheel
as from a source checkout. With --jobs N: the tasks, ER folds, QbE layers and
ASV checkpoint tests as units, N at a time, then one scoring step
(superb_jobs.py); with --slurm too, as SLURM job arrays, one per resource class
of downstream_configs/slurm_resources.yaml (superb_slurm.py), with
`--slurm-args "..."` (the site's sbatch options), `--slurm-resources FILE`
(another table) and `--dry-run` (print, submit nothing).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import NamedTuple

from ..shipped import shipped_dir

USAGE = ("superb-all [--jobs N] [--gpus 0,1,...] [--slurm [--slurm-args \"...\"] [--slurm-resources FILE] [--dry-run]] "
         "UPSTREAM_CKPT OUT_DIR [TASK ...]")
VALUED = ("--jobs", "--gpus", "--slurm-args", "--slurm-resources")


class Options(NamedTuple):
    jobs: int | None
    gpus: str | None
    slurm: bool
    rest: list[str]
    slurm_args: str | None = None
    resources: str | None = None
    dry_run: bool = False


def split_options(args: list[str]) -> Options:
    """--jobs, --gpus, --slurm, --slurm-args, --slurm-resources and --dry-run (before `--`, anywhere among the
    arguments) apart from the script's."""
    values: dict[str, str] = {}
    flags, rest, i = set(), [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i + 1:]
            break
        name, eq, value = arg.partition("=")
        if arg in ("--slurm", "--dry-run"):
            flags.add(arg)
        elif name in VALUED:
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"{name} needs a value ({USAGE})")
                i, value = i + 1, args[i + 1]
            values[name] = value
        else:
            rest.append(arg)
        i += 1
    jobs = values.get("--jobs")
    if jobs is not None and (not jobs.isdigit() or int(jobs) < 1):
        raise ValueError(f"--jobs '{jobs}' is not a positive integer")
    options = Options(int(jobs) if jobs is not None else None, values.get("--gpus"), "--slurm" in flags, rest,
                      values.get("--slurm-args"), values.get("--slurm-resources"), "--dry-run" in flags)
    if (options.gpus is not None or options.slurm) and options.jobs is None:
        raise ValueError(f"{'--gpus' if options.gpus is not None else '--slurm'} needs --jobs N "
                         "(how many units at a time)")
    if options.gpus is not None and options.slurm:
        raise ValueError("--gpus and --slurm: SLURM gives each unit its GPUs (downstream_configs/slurm_resources.yaml)")
    for name, given in (("--slurm-args", options.slurm_args is not None),
                        ("--slurm-resources", options.resources is not None), ("--dry-run", options.dry_run)):
        if given and not options.slurm:
            raise ValueError(f"{name} goes with --slurm ({USAGE})")
    return options


def superb_all_command(script_args: list[str]) -> int:
    script = shipped_dir("scripts") / "run_superb.sh"
    env = dict(os.environ)
    env.setdefault("PRUNED_UPSTREAM", f"{shlex.quote(sys.executable)} -m pruned_upstream.cli")
    options = split_options(script_args)
    rest = options.rest
    if options.jobs is None:
        return subprocess.run(["bash", str(script), *rest], env=env, stdin=subprocess.DEVNULL).returncode
    if len(rest) < 2:
        raise ValueError(f"usage: {USAGE}")
    from .superb_jobs import run_jobs

    slurm = None
    if options.slurm:
        from .superb_slurm import SlurmOptions, site_args

        slurm = SlurmOptions(site_args(options.slurm_args or ""), options.resources, options.dry_run)
    return run_jobs(script, rest[0], rest[1], rest[2:], options.jobs, options.gpus, env, slurm=slurm)
