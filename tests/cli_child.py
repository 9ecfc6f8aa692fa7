"""The command line in a child process under a data limit, for hostile-input tests whose point is the
message: one line on stderr, exit 1, no traceback, and a time bound (a child still running after
`timeout` seconds fails the test)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

DATA_LIMIT = 2 << 30  # bytes: the hostile cases asked the old readers for 2 GB and more
_CHILD = ("import resource, sys\n"
          f"resource.setrlimit(resource.RLIMIT_DATA, ({DATA_LIMIT}, {DATA_LIMIT}))\n"
          "from pruned_upstream.cli import main\n"
          "sys.exit(main(sys.argv[1:]))\n")


def run_cli(*args, cwd: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """`pruned-upstream ARGS` in a child under DATA_LIMIT: (the finished process, its wall seconds).
    A child still running after `timeout` seconds fails the test (subprocess.TimeoutExpired)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
    return proc, time.perf_counter() - start


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 1, nothing on stdout, one line on stderr holding each needle, no traceback."""
    err = proc.stderr
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err[-2000:]
    for needle in needles:
        assert needle in err, err
    return err


def alias_bomb(levels: int = 9) -> str:
    """A YAML flow sequence of `levels` anchors, each listing the previous one nine times: under 600
    bytes, 9**levels strings once expanded (billion laughs). Safe loaders share the aliased nodes, so
    loading is quick; whatever then walks or prints the value (a type check's message, str()) is not."""
    anchors = [f"&a0 [{', '.join(['lol'] * 9)}]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"[{', '.join(anchors)}]"
