"""`pruned-upstream superb-all UPSTREAM_CKPT OUT_DIR [TASK ...]`: the ten SUPERB tasks, then the score.

Runs the shipped `run_superb.sh` (scripts/README.md) with this installation's
command line, so that it works from a wheel as from a source checkout.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from ..shipped import shipped_dir


def superb_all_command(script_args: list[str]) -> int:
    script = shipped_dir("scripts") / "run_superb.sh"
    env = dict(os.environ)
    env.setdefault("PRUNED_UPSTREAM", f"{shlex.quote(sys.executable)} -m pruned_upstream.cli")
    return subprocess.run(["bash", str(script), *script_args], env=env, stdin=subprocess.DEVNULL).returncode
