"""A fork server for many short `pruned-upstream` commands: torch and s3prl imported once, each command forked.

    python -m pruned_upstream.commands.fork_server SOCKET &        # prints "ready" when it listens
    PRUNED_UPSTREAM_FORK_SERVER=SOCKET python -m pruned_upstream.commands.fork_client superb ...

Each `pruned-upstream superb` process spends about 6 s importing torch and
s3prl (docs/superb_small_data.md) and well under a second on a small-data run;
the ten tasks start about 33 of them per upstream. The server imports once and
forks a fresh child per request, which runs `cli.main(argv)` in the client's
working directory, environment and standard streams (passed as file
descriptors), and sends back the exit status. Nothing ran in the server but
imports, so every child starts from the same clean state. The demo uses it
(demo_superb.py); `scripts/run_superb.sh` takes it through `PRUNED_UPSTREAM`.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import struct
import sys

HEADER = struct.Struct("!Q")  # length of the JSON request that follows
STATUS = struct.Struct("!i")


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """(request, [stdin, stdout, stderr] fds): the header carries the descriptors."""
    fds = array.array("i")
    head, ancillary, _, _ = conn.recvmsg(HEADER.size, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if len(head) < HEADER.size:
        head += _recv_exact(conn, HEADER.size - len(head))
    (length,) = HEADER.unpack(head)
    return json.loads(_recv_exact(conn, length)), list(fds)


def _child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """Run one command in this forked process and exit with its status (never returns)."""
    code = 1
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command's own subprocesses are waited for
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["pruned-upstream", *request["argv"]]
        from .. import cli

        code = cli.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - report anything to the client, then exit
        print(f"pruned-upstream (fork server): {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            conn.sendall(STATUS.pack(int(code)))
        finally:
            os._exit(int(code) & 0xFF)


def serve(path: str) -> None:
    import s3prl.hub  # noqa: F401 - the imports every child would otherwise repeat
    import torch  # noqa: F401

    from .. import cli  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()  # one request at a time: the client waits for its child's status
        request, fds = _receive(conn)
        if request.get("stop"):
            conn.close()
            break
        if os.fork() == 0:
            server.close()
            _child(conn, request, fds)
        for fd in fds:
            os.close(fd)
        conn.close()
    server.close()
    os.unlink(path)


if __name__ == "__main__":
    serve(sys.argv[1])
