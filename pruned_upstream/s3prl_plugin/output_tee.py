"""The runner's standard output and error, also written line by line into ``<expdir>/stdout.log``.

PR, ASR, SF, ASV and SD print their test metrics only to standard output;
progress bars are collapsed to their last state.
"""

from __future__ import annotations

import re
from pathlib import Path

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm's cursor moves between nested bars


def last_segment(line: str) -> str:
    """What a terminal shows of ``line``: its last non-blank carriage-return segment."""
    for segment in reversed(_ANSI_ESCAPE.sub("", line).split("\r")):
        if segment.strip():
            return segment
    return ""


class LogSink:
    """Complete lines of stdout/stderr into one file; progress bars collapsed.

    Lines that end before the file is opened (before s3prl knows its expdir)
    are kept and written first. Each line is flushed at once, so forked data
    loader workers never inherit unwritten data. Once closed it ignores
    writes (a stream s3prl kept a reference to may still write).
    """

    def __init__(self, header: str):
        self.header, self.file, self.early, self.closed = header, None, [], False
        self.pending = {"stdout": "", "stderr": ""}

    def open(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")
        self._emit(self.header)
        for line in self.early:
            self._emit(line)
        self.early = []

    def write(self, key: str, text: str) -> None:
        if self.closed:
            return
        *lines, tail = (self.pending[key] + text).split("\n")
        for line in lines:
            self._emit(last_segment(line) + "\n")
        if "\r" in tail:  # keep memory bounded under a progress bar: last shown state + "\r"
            tail = last_segment(tail) + ("\r" if not tail.split("\r")[-1].strip() else "")
            tail = tail if tail.strip() else ""
        self.pending[key] = tail

    def _emit(self, line: str) -> None:
        if self.file is None:
            self.early.append(line)
        else:
            self.file.write(line)
            self.file.flush()

    def close(self) -> None:
        for key, tail in self.pending.items():
            if last_segment(tail):
                self._emit(last_segment(tail) + "\n")
            self.pending[key] = ""
        if self.file is not None:
            self.file.close()
            self.file = None
        self.closed, self.early = True, []


class TeeStream:
    """Writes to the real stream and to the sink; everything else is the real stream's."""

    def __init__(self, stream, sink: LogSink, key: str):
        self._stream, self._sink, self._key = stream, sink, key

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._sink.write(self._key, text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)
