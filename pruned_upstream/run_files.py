"""Writing inside a run directory without following a symbolic link (torch-free).

    refuse_links(run_dir)                        # before a run starts or resumes: one line if any entry is a link
    append_to(run_dir / "log.jsonl")             # O_APPEND | O_NOFOLLOW: a (dangling) link is refused
    write_replacing(path, data)                  # a new temp file (O_EXCL | O_NOFOLLOW), then os.replace
    with staged(path) as tmp: savefig(tmp)       # for writers that only take a path (matplotlib, torch)

A run directory may come from elsewhere (copied, unpacked, shared): `RUN/.lock`
pointing at ~/.bashrc would be truncated by a plain `open(..., O_CREAT)`,
`RUN/summary.json.tmp` pointing at a file would be overwritten, and a dangling
`RUN/log.jsonl` would create its target. So nothing inside RUN is opened
through a link: a writer opens its final name with `O_NOFOLLOW`, creates temp
files with `O_CREAT | O_EXCL` under a name nobody can guess (pid and random
token), and refuses a destination that is a link before `os.replace`.
RUN itself may be a link: the user named it (docs/reliability.md, "Runs").

`O_NOFOLLOW` guards the last component only; the directories a run writes into
(checkpoints/, checkpoints/step-N/, plots/, tb/, corpus/) are checked with lstat
by `refuse_links` before anything is written. A second process racing to plant
links while a run holds its lock is outside what this guards (it needs write
access to RUN, i.e. it is the owner).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import CheckpointError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# What a run writes at RUN's top level (run_dir.py's layout), and the directories whose every entry is ours.
RUN_ENTRIES = ("config.yaml", ".lock", "log.jsonl", "summary.json", "skipped_audio.tsv", "checkpoints", "plots",
               "tb", "corpus")
RUN_SUBDIRS = ("checkpoints", "plots", "tb", "corpus")


class RunLinkError(ValueError):
    """An entry of a run directory is a symbolic link: refused, in one line."""

    def __init__(self, path):
        super().__init__(f"{path} is a symbolic link; refused: nothing inside a run directory is followed through "
                         "a link (replace it with the file itself, or choose another --out)")
        self.path = str(path)


def is_link(path) -> bool:
    """True for a symlink, dangling ones included (lstat, never follows)."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def refuse_link(path) -> None:
    if is_link(path):
        raise RunLinkError(path)


def refuse_links(run_dir) -> None:
    """RunLinkError naming the first link among RUN's entries, the entries of its subdirectories
    (checkpoints/step-N, plots/*.png, ...) and the files of each checkpoint directory. RUN itself
    may be a link (named by the user)."""
    run_dir = Path(run_dir)
    for name in RUN_ENTRIES:
        refuse_link(run_dir / name)
    for sub in RUN_SUBDIRS:
        for entry in _entries(run_dir / sub):
            refuse_link(entry)
            if sub == "checkpoints":
                for item in _entries(entry):
                    refuse_link(item)


def _entries(folder: Path) -> list[Path]:
    """The entries of a real directory (not a link: checked by the caller), sorted; [] otherwise."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return []
        return sorted(folder.iterdir())
    except OSError:
        return []


def _open_nofollow(path, flags: int, mode: int = 0o644) -> int:
    """os.open with O_NOFOLLOW; a link (ELOOP) is a RunLinkError, a non-regular file is refused, and
    so is a file opened for writing in place (the lock, the log's appends) that has other hard links:
    writing it would change the file under its other names too."""
    try:
        fd = os.open(path, flags | NOFOLLOW | CLOEXEC | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as err:
        if err.errno == errno.ELOOP or is_link(path):
            raise RunLinkError(path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(path, "not a regular file; refused")
        if flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
            raise CheckpointError(path, f"has {st.st_nlink} hard links; refused: writing it would change the file "
                                        "under its other names too (replace it with a copy of itself)")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_run_file(path, limit: int = 1_000_000) -> bytes:
    """A small file of a run (summary.json, .lock), never through a link, at most `limit` bytes."""
    with os.fdopen(_open_nofollow(path, os.O_RDONLY), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(path, f"larger than {limit:,} bytes: too large for this kind of file; refused")
    return data


def open_run_file(path):
    """A binary file object reading `path` (a regular file, never through a link)."""
    return os.fdopen(_open_nofollow(path, os.O_RDONLY), "rb")


def append_to(path):
    """A text file object appending to `path` (created if missing), never through a link."""
    fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", encoding="utf-8")


def open_lock_file(path) -> int:
    """The fd of a lock file, read-write, created if missing, never through a link."""
    return _open_nofollow(path, os.O_RDWR | os.O_CREAT)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")


@contextlib.contextmanager
def new_temp_file(path) -> Iterator:
    """(binary file object, temp path) of a new file beside `path`: O_CREAT | O_EXCL | O_NOFOLLOW, a
    name nobody can plant in advance; removed again unless the caller moved it (`replace_into`)."""
    path = Path(path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def replace_into(tmp, path) -> None:
    """os.replace(tmp, path) unless `path` is a link (refused: the link stays, its target untouched)."""
    refuse_link(path)
    os.replace(tmp, path)


def write_replacing(path, data: bytes | str) -> None:
    """Write `data` to a new temp file, flush it to disk, then rename it over `path`: a reader
    (or a crash) sees the old file or the new one. OSError (full disk, ...) or RunLinkError."""
    path = Path(path)
    refuse_link(path)
    with new_temp_file(path) as (f, tmp):
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        replace_into(tmp, path)


@contextlib.contextmanager
def staged(path) -> Iterator[Path]:
    """A path to write `path`'s new content to, for writers that open by name (savefig): inside a
    new private directory beside it (mkdtemp: 0700, a fresh name), moved into place on success."""
    path = Path(path)
    refuse_link(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        tmp = folder / path.name
        yield tmp
        if tmp.exists():
            replace_into(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_dir(path) -> Path:
    """mkdir -p of a directory inside a run, refusing it when it is a link."""
    path = Path(path)
    refuse_link(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_tree(path) -> None:
    """Remove a directory of a run: a link is refused (its target is never touched); rmtree itself
    unlinks links found inside without following them (shutil's fd-based walk)."""
    refuse_link(path)
    shutil.rmtree(path)
