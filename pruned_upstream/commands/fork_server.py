"""A fork server for many short `pruned-upstream` commands: torch and s3prl imported once, each command forked.

    export PRUNED_UPSTREAM_FORK_SERVER="$(mktemp -d)/server"       # a new path inside a private directory
    python -m pruned_upstream.commands.fork_server "$PRUNED_UPSTREAM_FORK_SERVER" &   # prints "ready"
    python -m pruned_upstream.commands.fork_client superb ...

Each `pruned-upstream superb` process spends about 6 s importing torch and
s3prl (docs/superb_small_data.md) and well under a second on a small-data run;
the ten tasks start about 33 of them per upstream. The server imports once and
forks a fresh child per connection, which runs `cli.main(argv)` in the client's
working directory, environment and standard streams (passed as file
descriptors), and sends back the exit status. Nothing ran in the server but
imports, so every child starts from the same clean state. The demo uses it
(demo_superb.py); `scripts/run_superb.sh` takes it through `PRUNED_UPSTREAM`.

Who may use it (docs/reliability.md, "The fork server"): the server creates its
directory itself (mode 0700, refusing a path that exists) and binds the socket
inside it under umask 077; a connection whose peer (SO_PEERCRED) is not our uid
is closed before anything is read. Everything else happens in the forked child,
so an idle or hostile client holds only its own child: the request must arrive
within RECEIVE_SECONDS, is at most MAX_REQUEST bytes, must be JSON of the
expected shape and carry exactly three descriptors, else the child logs one
line and answers status 2. Linux only (SO_PEERCRED, /proc/self/fd).
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import stat
import struct
import sys
import time

HEADER = struct.Struct("!Q")  # length of the JSON request that follows
STATUS = struct.Struct("!i")
CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SOCKET = "socket"  # its name inside the server's directory
MAX_REQUEST = 1 << 20  # bytes of JSON; a whole environment is a few KiB
RECEIVE_SECONDS = 10.0  # from connection to the last byte of the request
REFUSED = 2  # the status a refused request gets


class RequestError(ValueError):
    """A request the server does not run (one line for its log)."""


class Stopped(BaseException):
    """SIGTERM: the server removes its socket and directory, then exits at once."""


def private_dir_problem(st: os.stat_result) -> str | None:
    """Why a directory (its lstat/fstat) cannot hold our socket, or None."""
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not ours ({os.getuid()})"
    if st.st_mode & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o}: others may enter or write it (0700 wanted)"
    return None


def open_dir(path: str) -> int:
    """A descriptor of the directory itself (never followed through a symlink)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def via_fd(dir_fd: int) -> str:
    """The socket's address through the directory's descriptor: short, and no path component can be swapped."""
    return f"/proc/self/fd/{dir_fd}/{SOCKET}"


def peer_uid(conn: socket.socket) -> int:
    return CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, CRED.size))[1]


def _recv_exact(conn: socket.socket, n: int, deadline: float | None = None) -> bytes:
    data = bytearray()
    while len(data) < n:
        if deadline is not None:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = conn.recv(min(n - len(data), 1 << 16))
        if not chunk:
            raise ConnectionError("the peer went away")
        data += chunk
    return bytes(data)


def _validate(request) -> dict:
    def strings(values) -> bool:
        return all(isinstance(v, str) and "\0" not in v for v in values)

    if not isinstance(request, dict) or set(request) != {"argv", "cwd", "env"}:
        raise RequestError("the request is not an object of argv, cwd and env")
    argv, cwd, env = request["argv"], request["cwd"], request["env"]
    if not isinstance(argv, list) or not strings(argv):
        raise RequestError("argv is not a list of strings")
    if not isinstance(cwd, str) or not strings([cwd]) or not os.path.isabs(cwd):
        raise RequestError("cwd is not an absolute path")
    if not isinstance(env, dict) or not strings(env.values()) or not strings(env) \
            or any(not k or "=" in k for k in env):
        raise RequestError("env is not a mapping of variable names to strings")
    return request


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """(request, [stdin, stdout, stderr] fds): the header carries the descriptors."""
    deadline = time.monotonic() + RECEIVE_SECONDS
    conn.settimeout(RECEIVE_SECONDS)
    fds = array.array("i")
    head, ancillary, flags, _ = conn.recvmsg(HEADER.size, socket.CMSG_SPACE(3 * fds.itemsize),
                                             socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    try:
        if not head:
            raise ConnectionError("the peer went away")
        if flags & socket.MSG_CTRUNC or len(fds) != 3:
            raise RequestError("the request does not carry exactly three descriptors (stdin, stdout, stderr)")
        head += _recv_exact(conn, HEADER.size - len(head), deadline)
        (length,) = HEADER.unpack(head)
        if length > MAX_REQUEST:
            raise RequestError(f"the header announces {length} bytes (at most {MAX_REQUEST})")
        try:
            request = json.loads(_recv_exact(conn, length, deadline))
        except (ValueError, RecursionError) as exc:
            raise RequestError(f"the request is not JSON ({type(exc).__name__})") from None
        return _validate(request), list(fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _run(request: dict, fds: list[int]) -> int:
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["pruned-upstream", *request["argv"]]
        from .. import cli

        return cli.main(request["argv"])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - report anything to the client, then exit
        print(f"pruned-upstream (fork server): {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _child(conn: socket.socket) -> None:
    """Receive one request, run it in this forked process, answer its status and exit (never returns)."""
    code = REFUSED
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command's own subprocesses are waited for
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            request, fds = _receive(conn)
        except (RequestError, OSError) as exc:  # timeouts and a peer gone are OSErrors
            print(f"fork server: request refused: {exc or type(exc).__name__}", file=sys.stderr, flush=True)
        else:
            conn.settimeout(None)
            code = _run(request, fds)
    finally:
        status = code if isinstance(code, int) and -2**31 <= code < 2**31 else 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            conn.settimeout(RECEIVE_SECONDS)
            conn.sendall(STATUS.pack(status))
        except BaseException:  # noqa: BLE001 - the client went away: nothing to tell it
            pass
        os._exit(status & 0xFF)


def make_private_dir(path: str) -> int:
    """Create `path` (0700, it must not exist) and return its descriptor."""
    old = os.umask(0o077)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise SystemExit(f"fork server: {path} exists; give a new path (the server creates its "
                         "private directory itself)") from None
    except OSError as exc:
        raise SystemExit(f"fork server: cannot create {path} ({exc.strerror})") from None
    finally:
        os.umask(old)
    fd = open_dir(path)
    problem = private_dir_problem(os.fstat(fd))
    if problem:
        os.close(fd)
        raise SystemExit(f"fork server: {path}: {problem}")
    return fd


def _accept_loop(server: socket.socket, uid: int) -> None:
    while True:
        conn, _ = server.accept()
        try:
            if peer_uid(conn) != uid:  # closed before a byte is read
                print(f"fork server: refused a peer of uid {peer_uid(conn)}", file=sys.stderr, flush=True)
                continue
            if os.fork() == 0:
                server.close()
                _child(conn)
        except OSError as exc:  # fork failed (EAGAIN), the peer went away: this connection only
            print(f"fork server: connection dropped: {exc}", file=sys.stderr, flush=True)
        finally:
            conn.close()


def serve(path: str) -> None:
    dir_fd = make_private_dir(path)  # before the slow imports: a bad path fails at once
    me = os.getpid()
    try:
        import s3prl.hub  # noqa: F401 - the imports every child would otherwise repeat
        import torch  # noqa: F401

        from .. import cli  # noqa: F401

        def stop(signum, frame):
            raise Stopped

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            server.bind(via_fd(dir_fd))
        finally:
            os.umask(old)
        server.listen(64)
        print("ready", flush=True)
        _accept_loop(server, os.getuid())
    finally:
        if os.getpid() == me:  # a forked child never cleans up the server's directory
            for remove in (lambda: os.unlink(SOCKET, dir_fd=dir_fd), lambda: os.rmdir(path)):
                try:
                    remove()
                except OSError:
                    pass
            os.close(dir_fd)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pruned_upstream.commands.fork_server NEW_DIRECTORY")
    try:
        serve(sys.argv[1])
    except Stopped:  # cleaned up in serve(); skip the slow interpreter shutdown with torch loaded
        sys.stderr.flush()
        os._exit(0)
