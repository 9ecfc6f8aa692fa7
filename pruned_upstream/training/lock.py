"""One `prune` process (group) per run directory: an advisory lock on RUN_DIR/.lock.

    with RunLock(run_dir):        # RunLocked (a ValueError) when another process holds it
        ...

The lock is `fcntl.flock` on an open file: the kernel drops it when its holder
ends in any way, SIGKILL included, so a lock left by a killed run is stale by
construction and the next `prune` takes it. The file keeps the holder's pid,
host and start time, which the refusal names. Under torchrun only rank 0 takes
it (run.py tells the other ranks). flock is local to one machine; on NFS it is
only as good as the server's lock support. The lock file is opened with
O_NOFOLLOW: a `.lock` that is a symbolic link (a run directory from elsewhere,
pointing at ~/.bashrc) is refused in one line, its target never truncated.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from ..run_files import open_lock_file, read_run_file

LOCK_NAME = ".lock"


class RunLocked(ValueError):
    """Another live process holds the run directory."""


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_lock_file(self.path)  # RunLinkError for a link, CheckpointError for a FIFO, a directory, ...
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunLocked(f"{self.path.parent} is in use by another prune ({holder(self.path)}): "
                            f"wait for it to end, or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                     .encode())
            os.fsync(fd)
        except OSError as err:  # full disk, quota, read-only file system: nothing has started yet
            os.close(fd)
            raise OSError(f"cannot write {self.path} ({err.strerror or err}): free space or choose another --out; "
                          "nothing was run") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: Path) -> str:
    """What the lock file says about its holder ("unknown holder" when it says nothing)."""
    try:  # bounded, one line, never through a link
        text = " ".join(read_run_file(path, limit=4096).decode("utf-8", "replace").split())[:200]
    except (OSError, ValueError):  # CheckpointError, RunLinkError
        text = ""
    return text or "unknown holder"
