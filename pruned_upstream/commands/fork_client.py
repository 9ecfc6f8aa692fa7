"""`pruned-upstream ARGS` through the fork server named by PRUNED_UPSTREAM_FORK_SERVER (fork_server.py).

Standard library only, so that it starts in milliseconds. Without a server (the
variable unset, or nothing listening), the command runs as a plain
`python -m pruned_upstream.cli ARGS`.
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys

from .fork_server import HEADER, STATUS, _recv_exact

ENV = "PRUNED_UPSTREAM_FORK_SERVER"


def run(argv: list[str]) -> int:
    path = os.environ.get(ENV)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not path:
            raise OSError(f"{ENV} is not set")
        conn.connect(path)
    except OSError:
        conn.close()
        os.execv(sys.executable, [sys.executable, "-m", "pruned_upstream.cli", *argv])
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    sys.stdout.flush()
    sys.stderr.flush()
    fds = array.array("i", [0, 1, 2])
    conn.sendmsg([HEADER.pack(len(request))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    conn.sendall(request)
    try:
        (code,) = STATUS.unpack(_recv_exact(conn, STATUS.size))
    except ConnectionError:
        print("pruned-upstream: the fork server's child died without an exit status", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
