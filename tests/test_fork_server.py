"""The fork server runs `pruned-upstream` commands with the client's cwd, environment, streams and exit status,
for our own uid only, and survives hostile clients; the client talks only to a private server of ours."""

from __future__ import annotations

import array
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pruned_upstream.commands.fork_server import HEADER, SOCKET, STATUS

CSV = "model,PR,KS,IC,SID,ER,ASR,QbE,SF-F1,SF-CER,ASV,SD\nm,5,95,98,80,65,6,7,88,25,5,6\n"
SIZED = CSV.replace("model,", "model,params_M,").replace("m,", "m,20,")  # can be plotted
NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")


@pytest.fixture(scope="module")
def server():
    """One server for the module (it imports torch and s3prl), started under umask 002.

    Its parent directory is 0711 so that a process of another uid can reach the server's own directory
    when a test loosens that directory's mode on purpose."""
    base = Path(tempfile.mkdtemp(prefix="pu-fork-test-"))
    base.chmod(0o711)
    path = base / "srv"
    proc = subprocess.Popen([sys.executable, "-m", "pruned_upstream.commands.fork_server", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            umask=0o002)
    assert proc.stdout.readline().strip() == "ready"
    yield proc, path
    proc.terminate()
    proc.wait(timeout=30)
    assert not path.exists()  # SIGTERM: the server removed its socket and directory
    shutil.rmtree(base, ignore_errors=True)


def client(where, cwd, *argv, **env):
    full = {**os.environ, "PRUNED_UPSTREAM_FORK_SERVER": str(where), **env}
    return subprocess.run([sys.executable, "-m", "pruned_upstream.commands.fork_client", *argv], cwd=cwd,
                          env=full, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


def raw_request(path: Path, payload: bytes, header: bytes | None = None, fds=(0, 1, 2)) -> bytes:
    """What the server answers a hand-made request (b"" when it closes the connection)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(path / SOCKET))
        head = HEADER.pack(len(payload)) if header is None else header
        conn.sendmsg([head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else [])
        conn.sendall(payload)
        data = b""
        while chunk := conn.recv(64):
            data += chunk
        return data


def plot_request(cwd: Path, marker: Path) -> bytes:
    """A command that writes `marker` when it runs."""
    (cwd / "sized.csv").write_text(SIZED)
    return json.dumps({"argv": ["score", "sized.csv", "--plot", str(marker)], "cwd": str(cwd),
                       "env": dict(os.environ)}).encode()


def test_a_command_runs_in_the_clients_directory_with_its_output_and_status(server, tmp_path):
    (tmp_path / "results.csv").write_text(CSV)
    start = time.perf_counter()
    done = client(server[1], tmp_path, "score", "results.csv", "--json")  # a relative path: the client's cwd
    assert time.perf_counter() - start < 5  # no torch import in the client or the child
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["model"] == "m" and not row["partial"]
    failed = client(server[1], tmp_path, "score", "missing.csv")
    assert failed.returncode == 1 and "missing.csv does not exist" in failed.stderr


def test_the_clients_environment_reaches_the_command(server, tmp_path):
    gone = client(server[1], tmp_path, "superb-step", "dscore-root", DSCORE_ROOT="")
    assert gone.returncode == 2 and "DSCORE_ROOT is not set" in gone.stderr
    there = tmp_path / "dscore"
    there.mkdir()
    (there / "score.py").write_text("")
    found = client(server[1], tmp_path, "superb-step", "dscore-root", DSCORE_ROOT=str(there))
    assert found.returncode == 0 and found.stdout.strip() == str(there)


def test_without_a_server_the_client_runs_the_command_itself(tmp_path):
    (tmp_path / "results.csv").write_text(CSV)
    for where in (tmp_path / "nobody-listens", tmp_path):  # no directory; a private directory without a socket
        tmp_path.chmod(0o700)
        done = client(where, tmp_path, "score", "results.csv")
        assert done.returncode == 0 and done.stdout.splitlines()[1].split()[0] == "model", done.stderr


def test_the_servers_directory_and_socket_are_private_under_umask_002(server, tmp_path):
    path = server[1]
    st, sock = os.lstat(path), os.lstat(path / SOCKET)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) & 0o077 == 0
    taken = tmp_path / "exists"
    taken.mkdir(mode=0o700)
    start = time.perf_counter()
    refused = subprocess.run([sys.executable, "-m", "pruned_upstream.commands.fork_server", str(taken)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "exists" in refused.stderr and not refused.stdout
    assert time.perf_counter() - start < 5  # refused before importing torch
    assert os.listdir(taken) == []


@as_root
def test_a_peer_with_another_uid_is_refused_and_nothing_runs(server, tmp_path):
    """Even with the directory and socket opened up (a misconfiguration), SO_PEERCRED keeps others out."""
    proc, path = server
    marker = tmp_path / "marker.png"
    request = plot_request(tmp_path, marker)
    path.chmod(0o711)
    (path / SOCKET).chmod(0o666)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the other user's process: a hand-made request, with /dev/null as its streams
            code = 3
            try:
                os.close(read)
                null = os.open(os.devnull, os.O_RDWR)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                try:
                    answer = raw_request(path, request, fds=(null, null, null))
                except (BrokenPipeError, ConnectionResetError):  # closed while we were still sending
                    answer = b""
                os.write(write, b"closed" if answer == b"" else b"answered " + answer)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - say what went wrong in the parent's assertion
                os.write(write, repr(exc).encode())
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read, "rb") as got:
            said = got.read()
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        path.chmod(0o700)
        (path / SOCKET).chmod(0o600)
    assert said == b"closed"  # closed before a byte was read: no status, and
    assert not marker.exists()  # the command did not run
    # the same request from our own uid runs (the marker can appear), and the server still serves
    assert raw_request(path, request) == STATUS.pack(0)
    assert marker.is_file() and proc.poll() is None


def test_an_idle_connection_does_not_block_another_client(server, tmp_path):
    (tmp_path / "results.csv").write_text(CSV)
    path = server[1]
    idle, half = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
    with idle, half:
        idle.connect(str(path / SOCKET))  # sends nothing
        half.connect(str(path / SOCKET))
        half.sendall(HEADER.pack(100)[:3])  # a header cut short
        start = time.perf_counter()
        done = client(path, tmp_path, "score", "results.csv", "--json")
        assert done.returncode == 0 and time.perf_counter() - start < 5, done.stderr


@pytest.mark.parametrize("name,header,payload,fds", [
    ("2**63 bytes announced", HEADER.pack(2 ** 63), b"{}", (0, 1, 2)),
    ("2**64-1 bytes announced", HEADER.pack(2 ** 64 - 1), b"", (0, 1, 2)),
    ("bad JSON", None, b"{not json", (0, 1, 2)),
    ("deeply nested JSON", None, b"[" * 100_000 + b"]" * 100_000, (0, 1, 2)),
    ("not an object", None, b"[1, 2]", (0, 1, 2)),
    ("argv not strings", None, json.dumps({"argv": [1], "cwd": "/", "env": {}}).encode(), (0, 1, 2)),
    ("env not strings", None, json.dumps({"argv": [], "cwd": "/", "env": {"A": 1}}).encode(), (0, 1, 2)),
    ("cwd with NUL", None, json.dumps({"argv": [], "cwd": "/\0", "env": {}}).encode(), (0, 1, 2)),
    ("extra keys", None, json.dumps({"argv": [], "cwd": "/", "env": {}, "stop": 1}).encode(), (0, 1, 2)),
    ("no descriptors", None, json.dumps({"argv": ["score", "x"], "cwd": "/", "env": {}}).encode(), ()),
    ("too many descriptors", None, json.dumps({"argv": ["score", "x"], "cwd": "/", "env": {}}).encode(),
     (0, 1, 2, 0, 1, 2)),
])
def test_hostile_requests_are_refused_and_the_server_keeps_serving(server, tmp_path, name, header, payload, fds):
    proc, path = server
    try:
        answer = raw_request(path, payload, header, fds)
    except (BrokenPipeError, ConnectionResetError):  # refused while we were still sending
        answer = b"reset"
    assert answer in (STATUS.pack(2), b"reset")
    (tmp_path / "results.csv").write_text(CSV)  # then a request only the server answers (no local fallback)
    served = json.dumps({"argv": ["score", "results.csv", "--json"], "cwd": str(tmp_path), "env": {}})
    assert raw_request(path, served.encode()) == STATUS.pack(0) and proc.poll() is None


def _listener(where: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(where / SOCKET))
    sock.listen(1)
    sock.settimeout(0.3)
    return sock


def _assert_refused_and_nothing_sent(where: Path, listener: socket.socket, tmp_path: Path, reason: str):
    (tmp_path / "results.csv").write_text(CSV)
    done = client(where, tmp_path, "score", "results.csv")
    assert done.returncode == 1 and not done.stdout  # neither sent nor run locally
    (line,) = done.stderr.splitlines()
    assert "nothing was sent" in line and reason in line
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return
    with conn:  # connected (only the peer check comes after connect): not a byte may have come
        conn.settimeout(5)
        assert conn.recv(1) == b""


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o701])
def test_the_client_refuses_a_directory_others_may_enter(tmp_path, mode):
    where = tmp_path / "srv"
    where.mkdir()
    with _listener(where) as listener:
        where.chmod(mode)
        _assert_refused_and_nothing_sent(where, listener, tmp_path, f"mode {mode:04o}")


def test_the_client_refuses_a_symlink_and_a_socket_path(tmp_path):
    where = tmp_path / "srv"
    where.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(where)
    with _listener(where) as listener:
        _assert_refused_and_nothing_sent(tmp_path / "link", listener, tmp_path, "not a directory")
        _assert_refused_and_nothing_sent(where / SOCKET, listener, tmp_path, "not a directory")


@as_root
@pytest.mark.parametrize("owned_by_nobody", ["directory", "socket"])
def test_the_client_refuses_what_another_uid_owns(tmp_path, owned_by_nobody):
    where = tmp_path / "srv"
    where.mkdir(mode=0o700)
    with _listener(where) as listener:
        os.chown(where if owned_by_nobody == "directory" else where / SOCKET, NOBODY, NOBODY)
        reason = "owned by uid 65534" if owned_by_nobody == "directory" else "not a socket owned by us"
        _assert_refused_and_nothing_sent(where, listener, tmp_path, reason)


@as_root
def test_the_client_refuses_a_listener_of_another_uid(tmp_path):
    """Our directory and our socket file, but the listening process became another user before listen()."""
    where = tmp_path / "srv"
    where.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(where / SOCKET))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sock.listen(1)  # the peer credentials a client sees are the listener's at listen()
            os.write(write, b"l")
            sock.settimeout(30)
            conn, _ = sock.accept()
            conn.settimeout(30)
            os.write(write, b"%d" % len(conn.recv(1 << 16)))
        finally:
            os._exit(0)
    os.close(write)
    sock.close()
    try:
        assert os.read(read, 1) == b"l"
        (tmp_path / "results.csv").write_text(CSV)
        done = client(where, tmp_path, "score", "results.csv")
        assert done.returncode == 1 and not done.stdout
        assert "runs as uid 65534" in done.stderr and "nothing was sent" in done.stderr
        assert os.read(read, 16) == b"0"  # the listener received no byte
    finally:
        os.close(read)
        os.waitpid(pid, 0)
