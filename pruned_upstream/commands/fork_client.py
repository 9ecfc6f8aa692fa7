"""`pruned-upstream ARGS` through the fork server whose directory PRUNED_UPSTREAM_FORK_SERVER names (fork_server.py).

Standard library only, so that it starts in milliseconds. Without a server (the
variable unset, the directory or its socket absent, nothing listening), the
command runs as a plain `python -m pruned_upstream.cli ARGS`.

The client sends its whole environment and its standard descriptors, so it
first makes sure the listener is our own server: the directory (opened without
following a symlink) must be ours with mode 0700, the socket inside it a socket
we own, and the listening process (SO_PEERCRED) our uid. Otherwise it prints
one line, sends nothing and exits 1; it does not run the command itself either,
since the variable is set to something that is not a private server.
"""

from __future__ import annotations

import array
import json
import os
import socket
import stat
import sys

from .fork_server import (HEADER, MAX_REQUEST, SOCKET, STATUS, _recv_exact, open_dir, peer_uid,
                          private_dir_problem, via_fd)

ENV = "PRUNED_UPSTREAM_FORK_SERVER"


class Refused(Exception):
    """The variable names something that is not our private server."""


def connect(where: str) -> socket.socket | None:
    """A connection to our own server in the directory `where`; None when no server is there."""
    try:
        dir_fd = open_dir(where)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a symlink (ELOOP), a file such as an old-style socket path (ENOTDIR), EACCES
        raise Refused(f"{where} is not a directory we may use ({exc.strerror}); {ENV} names the "
                      "directory the fork server created") from None
    try:
        problem = private_dir_problem(os.fstat(dir_fd))
        if problem:
            raise Refused(f"{where}: {problem}")
        try:
            st = os.stat(SOCKET, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
            raise Refused(f"{where}/{SOCKET} is not a socket owned by us")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(via_fd(dir_fd))
            if peer_uid(conn) != os.getuid():
                raise Refused(f"{where}/{SOCKET}: the listening process runs as uid {peer_uid(conn)}, not ours")
        except (ConnectionRefusedError, FileNotFoundError):
            conn.close()
            return None
        except BaseException:
            conn.close()
            raise
        return conn
    finally:
        os.close(dir_fd)


def run(argv: list[str]) -> int:
    where = os.environ.get(ENV)
    try:
        conn = connect(where) if where else None
    except Refused as exc:
        print(f"pruned-upstream: not using the fork server: {exc}; nothing was sent", file=sys.stderr)
        return 1
    if conn is None:
        os.execv(sys.executable, [sys.executable, "-m", "pruned_upstream.cli", *argv])
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    if len(request) > MAX_REQUEST:
        conn.close()
        print(f"pruned-upstream: the request ({len(request)} bytes, most of it the environment) is over the "
              f"fork server's {MAX_REQUEST}; nothing was sent", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    fds = array.array("i", [0, 1, 2])
    with conn:
        try:
            conn.sendmsg([HEADER.pack(len(request))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            conn.sendall(request)
            (code,) = STATUS.unpack(_recv_exact(conn, STATUS.size))
        except OSError as exc:  # ConnectionError included
            print(f"pruned-upstream: the fork server's child ended without an exit status ({exc})", file=sys.stderr)
            return 1
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
