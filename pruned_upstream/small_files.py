"""Reading small files that strangers made: regular files only, bounded, YAML without aliases.

    text = read_small_text(path)                 # config.json, args_*.yaml, a lock file, ...
    data = load_yaml(text, where=path)           # safe YAML; anchors/aliases refused (billion laughs)
    for line in iter_lines(path): ...            # a log read line by line, each line bounded

A path may name a FIFO (read forever), `/dev/zero` through a symlink (endless),
or a sparse file of a terabyte: each reader here opens without blocking, checks
that what it opened is a regular file, and reads at most a bound it states in
its error. Every failure is a `CheckpointError` naming the file and why, in one
line (torch-free: the SUPERB score and the config reader use it too).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import yaml

from .errors import CheckpointError

SMALL = 1_000_000          # bytes: a config, a JSON sidecar, a lock file
LINE = 65_536              # bytes: one line of a log; longer ones are cut to this


def open_regular(path, binary: bool = True):
    """An open file object for `path` if it is a regular file (symlinks to regular files are
    followed: Hugging Face caches use them); a FIFO, device or directory is refused without
    blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise CheckpointError(path, f"cannot be read: {err.strerror or err}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(path, f"not a regular file ({_kind(mode)}); refused")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb" if binary else "r", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_small_bytes(path, limit: int = SMALL) -> bytes:
    """The whole file, if it is regular and at most `limit` bytes."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(path, f"larger than {limit:,} bytes: too large for this kind of file; refused")
    return data


def read_small_text(path, limit: int = SMALL) -> str:
    """read_small_bytes decoded as UTF-8."""
    data = read_small_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(path, f"not UTF-8 text (byte {err.start}); refused") from None


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors and aliases: without them a document's value is
    no larger than its text, so a few hundred bytes cannot expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted here",
                                              event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "YAML anchors (&name) are not accepted here",
                                              event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str, where="<yaml>"):
    """Safe YAML without aliases; any error is one CheckpointError line naming `where`."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise CheckpointError(where, f"invalid YAML: {_one_line(err)}") from None
    except RecursionError:
        raise CheckpointError(where, "invalid YAML: nested too deeply") from None


def read_yaml_file(path, limit: int = SMALL):
    """load_yaml of a small regular file."""
    return load_yaml(read_small_text(path, limit), where=path)


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:300] + (" ..." if len(text) > 300 else "")


def iter_lines(path, max_line: int = LINE, max_bytes: int | None = None) -> Iterator[str]:
    """The file's lines (decoded, undecodable bytes replaced), each cut to `max_line` bytes;
    memory stays bounded whatever the file holds. `max_bytes`: stop (CheckpointError) after
    reading that many bytes in all."""
    total = 0
    with open_regular(path) as f:
        while True:
            chunk = f.readline(max_line)
            if not chunk:
                return
            total += len(chunk)
            line = chunk
            while not chunk.endswith(b"\n"):  # the rest of a long line: read and dropped
                chunk = f.readline(max_line)
                if not chunk:
                    break
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    break
            if max_bytes is not None and total > max_bytes:
                raise CheckpointError(path, f"more than {max_bytes:,} bytes: too large for this kind of file; refused")
            yield line.decode("utf-8", "replace").rstrip("\r\n")


def is_link(path) -> bool:
    """True for a symlink (dangling ones included)."""
    return Path(path).is_symlink()
