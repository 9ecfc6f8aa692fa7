"""Where s3prl 0.4.18 writes each task's test metric, and the readers that find it (docs/superb_score.md).

Every reader returns (value in references.METRICS units, "file:line") or None. A value is
only ever one the file states in full: a log that cannot be read, a matched line cut short
(the file's last line without its newline: truncated, or still being written) or a value
that is not a plain decimal number is a CheckpointError naming the file and line.

Logs are read line by line in 64 KiB blocks, only from regular files: a line longer
than small_files.LINE (64 Ki characters) is not read, and only the last MAX_MATCHES
matching lines of a file are kept, so a sparse 1 GiB log.log costs time but no memory,
and a FIFO or a link to /dev/zero is refused instead of read forever.
"""

from __future__ import annotations

import codecs
import re
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

from pruned_upstream.errors import CheckpointError
from pruned_upstream.small_files import LINE, open_regular
from pruned_upstream.superb.records import STDOUT_LOG
from pruned_upstream.superb.references import TASKS

QBE_SCORE_LOG = "score_twv.log"      # stdout of QUESST14's scoring/score-TWV-Cnxe.sh
QBE_OURS_LOG = "score_twv_ours.log"  # our MTWV (superb/mtwv.py OURS_LOG), not the official scorer
QBE_OURS_TAG = "[ours: superb/mtwv.py, not QUESST14's scorer]"
MAX_MATCHES = 1000  # matching lines kept per file (the last ones); s3prl writes a few dozen at most


def _matches(path: Path, pattern: re.Pattern, whole_lines: bool = True) -> list[tuple[str, re.Match]]:
    """(file:line, match) for each line of `path` matching `pattern`; `whole_lines`: a match
    on a last line without its newline is refused (its value may be cut short)."""
    return _matches_each(path, (pattern,), whole_lines)[0]


def _matches_each(path: Path, patterns, whole_lines: bool = True) -> list[list[tuple[str, re.Match]]]:
    """_matches of several patterns in one reading of the file; `whole_lines` holds for the first."""
    if not path.exists():
        return [[] for _ in patterns]
    found = [deque(maxlen=MAX_MATCHES) for _ in patterns]
    count, last, ended = 0, "", True
    try:
        with open_regular(path) as file:
            for line in _lines(file):
                count, ended = count + 1, line is not None and line.endswith(("\n", "\r"))
                if line is not None:
                    last = line.strip()
                    for pattern, kept in zip(patterns, found):
                        if m := pattern.search(last):
                            kept.append((count, m))
    except OSError as err:
        raise CheckpointError(path, f"cannot be read ({err.strerror or err})") from None
    if whole_lines and found[0] and found[0][-1][0] == count and not ended:
        raise CheckpointError(f"{path}:{count}", f"{last[:80]!r} is cut short (the file ends "
                                                 "without a newline: truncated, or still being written); not read")
    return [[(f"{path}:{n}", m) for n, m in kept] for kept in found]


def _lines(file) -> Iterator[str | None]:
    """The file's lines with their ends, split as str.splitlines splits (tqdm's \\r too), read in
    blocks: memory stays bounded whatever the file holds. A line longer than LINE characters is
    None (not read); a line without its end is the file's last, cut short."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending, overlong = "", False
    while True:
        block = file.read(BLOCK)
        if overlong and not pending and block and not any(b in block for b in _BREAK_BYTES):
            continue  # still inside a line too long to read (a sparse file's hole): not even decoded
        pieces = (pending + decoder.decode(block, final=not block)).splitlines(keepends=True)
        pending = pieces.pop() if block and pieces else ""  # it may go on in the next block
        for piece in pieces:
            yield None if overlong or len(piece) > LINE else piece
            overlong = False
        if len(pending) > LINE and pending[-1] in _ENDS:  # a whole line, too long to read
            yield None
            pending, overlong = "", False
        elif len(pending) > LINE:  # keep a last "\r": the next block's "\n" may belong to it
            overlong, pending = True, pending[-1:] if pending.endswith("\r") else ""
        if not block:
            if overlong and not pending:
                yield None  # the file ends inside the line too long to read
            return


BLOCK = 1 << 20  # bytes read at once
# What str.splitlines splits at: the characters that end a line for sure ("\r" may be followed by
# "\n"); the bytes that start any of them in UTF-8 (memchr-fast to look for)
_ENDS = "\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAK_BYTES = tuple(bytes([b]) for b in b"\n\r\x0b\x0c\x1c\x1d\x1e\xc2\xe2")


_DECIMAL = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _number(text: str, where: str) -> float:
    """A plain decimal number (what Python and dscore print); NaN, inf, '1_0', 'tensor(0.9)' are refused."""
    if not _DECIMAL.fullmatch(text):
        raise CheckpointError(where, f"{text!r} is not a number")
    return float(text)


_LOG_TEST = re.compile(r"^test at step (\d+): (\S+)$")
_LOG_BEST_DEV = re.compile(r"^New best on dev at step (\d+): ")


def read_log_accuracy(expdir: Path) -> tuple[float, str] | None:
    """KS/IC/SID/ER: `log.log` (percent = fraction x 100).

    s3prl's experts append `test at step N: <acc>` (speech_commands,
    fluent_commands, voxceleb1, emotion `log_records`). Chosen line: the last
    one from `-m evaluate` (it logs step 0); otherwise the test line at the
    step of the last `New best on dev at step N` (the dev-best checkpoint);
    otherwise the last test line.
    """
    tests, best = _matches_each(expdir / "log.log", (_LOG_TEST, _LOG_BEST_DEV))  # no value read from `best`
    if not tests:
        return None
    chosen = [t for t in tests if t[1].group(1) == "0"]
    if not chosen and best:
        step = best[-1][1].group(1)
        chosen = [t for t in tests if t[1].group(1) == step]
        if not chosen:  # another step's test line would be another checkpoint's result
            raise CheckpointError(best[-1][0], f"the dev-best step {step} has no 'test at step {step}' line "
                                               "(the run stopped before testing it?); no other step's result is read")
    where, match = (chosen or tests)[-1]
    return 100.0 * _number(match.group(2), where), where


def _last_value(path: Path, pattern: str, scale: float, whole_lines: bool = True) -> tuple[float, str] | None:
    found = _matches(path, re.compile(pattern), whole_lines)
    if not found:
        return None
    where, match = found[-1]
    return scale * _number(match.group(1), where), where


def read_asv_eer(expdir: Path) -> tuple[float, str] | None:
    """ASV: the lowest `sv-voxceleb1/test-EER: <eer>` over `states-*/log.txt`
    (written by s3prl's sv_voxceleb1/test_expdir.sh), else the last one in
    stdout.log; EER fraction x 100."""
    pattern = re.compile(r"sv-voxceleb1/test-EER: (\S+)$")
    found = [m for log in sorted(expdir.glob("states-*/log.txt")) for m in _matches(log, pattern)]
    found = found or _matches(expdir / STDOUT_LOG, pattern)[-1:]
    if not found:
        return None
    values = [(100.0 * _number(m.group(1), where), where) for where, m in found]
    return min(values)


def read_sd_der(expdir: Path) -> tuple[float, str] | None:
    """SD: the lowest `*** OVERALL ***` DER (percent, dscore's 2nd column) over
    `scoring/result_th*_med*`, the files s3prl's diarization/score.sh writes."""
    pattern = re.compile(r"\*\*\* OVERALL \*\*\*\s+(\S+)\s+\S")  # DER, then JER: the DER column is whole
    files = sorted(expdir.glob("scoring/result_th*_med*"))
    found = [m for file in files for m in _matches(file, pattern, whole_lines=False)]
    if not found:
        return None
    return min((_number(m.group(1), where), where) for where, m in found)


def read_qbe_mtwv(expdir: Path) -> tuple[float, str] | None:
    """QbE: `actTWV: a maxTWV: b Threshold: c` printed by QUESST14's
    score-TWV-Cnxe.sh (the line s3prl's problem/superb/qbe.py parses), saved as
    score_twv.log, else found in stdout.log; else the same line written by our
    own scorer (superb/mtwv.py) to score_twv_ours.log, its source then tagged
    QBE_OURS_TAG (not the official scorer). MTWV x 100."""
    pattern = r"actTWV:\s*\S+\s+maxTWV:\s*(\S+)\s+Threshold:"  # maxTWV is whole when Threshold: follows
    official = (_last_value(expdir / QBE_SCORE_LOG, pattern, 100.0, whole_lines=False)
                or _last_value(expdir / STDOUT_LOG, pattern, 100.0, whole_lines=False))
    if official:
        return official
    ours = _last_value(expdir / QBE_OURS_LOG, pattern, 100.0, whole_lines=False)
    return (ours[0], f"{ours[1]} {QBE_OURS_TAG}") if ours else None


def is_our_mtwv(source: str) -> bool:
    """Whether a QbE value's source (file:line) is our MTWV rather than QUESST14's scorer."""
    return source.endswith(QBE_OURS_TAG)


def _stdout(pattern: str, scale: float) -> Callable[[Path], tuple[float, str] | None]:
    return lambda expdir: _last_value(expdir / STDOUT_LOG, pattern, scale)


# metric -> (reader, what the reader looks for: used in error messages).
# PR (ctc `per`), SF (ctc `slot_type_f1`, `slot_value_cer`) are fractions;
# ASR's wer is already percent (asr/expert.py: 100.0 * errors / words).
TASK_SOURCES: dict[str, tuple[Callable[[Path], tuple[float, str] | None], str]] = {
    "PR": (_stdout(r"^test per: (\S+)$", 100.0), f"{STDOUT_LOG}: 'test per: X'"),
    "KS": (read_log_accuracy, "log.log: 'test at step N: X'"),
    "IC": (read_log_accuracy, "log.log: 'test at step N: X'"),
    "SID": (read_log_accuracy, "log.log: 'test at step N: X'"),
    "ER": (read_log_accuracy, "log.log: 'test at step N: X'"),
    "ASR": (_stdout(r"^test-clean wer: (\S+)$", 1.0), f"{STDOUT_LOG}: 'test-clean wer: X'"),
    "QbE": (read_qbe_mtwv, f"{QBE_SCORE_LOG}, {STDOUT_LOG} or {QBE_OURS_LOG}: "
                           "'actTWV: a maxTWV: b Threshold: c'"),
    "SF-F1": (_stdout(r"^test slot_type_f1: (\S+)$", 100.0),
              f"{STDOUT_LOG}: 'test slot_type_f1: X'"),
    "SF-CER": (_stdout(r"^test slot_value_cer: (\S+)$", 100.0),
               f"{STDOUT_LOG}: 'test slot_value_cer: X'"),
    "ASV": (read_asv_eer, f"states-*/log.txt or {STDOUT_LOG}: 'sv-voxceleb1/test-EER: X'"),
    "SD": (read_sd_der,
           "scoring/result_th*_med*: '*** OVERALL *** DER' (run s3prl's diarization/score.sh)"),
}
TASK_METRIC_NAMES = {task: (task,) for task in TASKS} | {"SF": ("SF-F1", "SF-CER")}
