"""``pruned-upstream superb``: s3prl's own downstream runner, in-process.

s3prl resolves ``-u NAME`` with ``getattr(s3prl.hub, NAME)`` (in
``run_downstream.py`` and ``downstream/runner.py``), so adding our entries to
``s3prl.hub`` and then calling ``s3prl.run_downstream.main()`` with
``sys.argv`` set runs SUPERB with our upstream and no change to s3prl's files.
Around that call this module smooths the rough edges of s3prl 0.4.18 on
torch >= 2.6 (see docs/s3prl.md):

* ``argparse.Namespace`` is allow-listed for ``torch.load``'s default
  ``weights_only=True`` (checkpoints store the runner's ``Args``);
* ``--device cpu`` is added when no GPU is present (s3prl defaults to cuda);
* ``-c`` defaults to our ``downstream_configs/<task>.yaml`` (the PyPI sdist
  ships no task configs);
* s3prl expects to run from its package directory (``./downstream/...`` paths
  in its configs): the user's paths are made absolute, then the run happens
  there, and the working directory is restored;
* stdout and stderr are also written to ``<expdir>/stdout.log`` (PR, ASR, SF,
  ASV and SD print their test metrics only there), progress bars collapsed to
  their last state;
* the process-wide state s3prl changes (``builtins.isinstance``,
  ``sys.argv``, logging streams) is restored afterwards.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import logging
import os
import re
import shlex
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HUBCONF_MODULE = "pruned_upstream.s3prl_plugin.hubconf"
LOG_NAME = "stdout.log"
PROG = "run_downstream.py"

# Flags of s3prl 0.4.18's run_downstream.py whose values are read or rewritten here.
_FLAGS = {
    "-m": "mode", "--mode": "mode",
    "-t": "evaluate_split", "--evaluate_split": "evaluate_split",
    "-o": "override", "--override": "override",
    "-e": "past_exp", "--past_exp": "past_exp",
    "-i": "init_ckpt", "--init_ckpt": "init_ckpt",
    "-c": "config", "--config": "config",
    "-d": "downstream", "--downstream": "downstream",
    "-k": "upstream_ckpt", "--upstream_ckpt": "upstream_ckpt",
    "-g": "upstream_model_config", "--upstream_model_config": "upstream_model_config",
    "-n": "expname", "--expname": "expname",
    "-p": "expdir", "--expdir": "expdir",
    "--cache_dir": "cache_dir",
    "--device": "device",
}
# Always file system paths; -k may be a URL or hub id, -t a split name.
_PATH_DESTS = ("past_exp", "init_ckpt", "config", "upstream_model_config", "expdir", "cache_dir")
_REGISTERED: dict[str, Callable] = {}
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm's cursor moves between nested bars


# --------------------------------------------------------------- registration
def hub_entries() -> dict[str, Callable]:
    """Our upstream entries: every public ``pruned_wavlm*`` callable of our hubconf."""
    hubconf = importlib.import_module(HUBCONF_MODULE)
    names = [n for n in dir(hubconf) if n.startswith("pruned_wavlm") and callable(getattr(hubconf, n))]
    if not names:
        raise ImportError(f"{HUBCONF_MODULE} defines no pruned_wavlm* entry")
    return {name: getattr(hubconf, name) for name in names}


def register_upstreams(entries: dict[str, Callable] | None = None) -> dict[str, Callable]:
    """Add ``entries`` (default: :func:`hub_entries`) as attributes of ``s3prl.hub``.

    Replacing one of s3prl's own upstreams is refused; our earlier
    registrations may be replaced. Returns the entries registered.
    """
    import s3prl.hub as hub

    entries = hub_entries() if entries is None else dict(entries)
    for name, entry in entries.items():
        existing = getattr(hub, name, None)
        if existing is not None and existing is not entry and name not in _REGISTERED:
            raise ValueError(f"s3prl.hub already has {name!r} ({existing!r}); refusing to replace it")
        setattr(hub, name, entry)
        _REGISTERED[name] = entry
    return entries


# ---------------------------------------------------------- argument rewrite
def config_for_downstream(downstream: str) -> Path:
    """Our default ``-c`` for an s3prl downstream name (``-d``), from ``tasks.TASKS``.

    ``ctc`` serves both PR and SF, so it has no default: pass ``-c``.
    """
    from pruned_upstream.s3prl_plugin import tasks

    keys = [spec.key for spec in tasks.TASKS.values() if spec.downstream == downstream]
    if len(keys) != 1:
        counts = Counter(spec.downstream for spec in tasks.TASKS.values())
        known = sorted(name for name, n in counts.items() if n == 1)
        raise ValueError(
            f"no single default config for downstream {downstream!r} (tasks: {keys}; "
            f"downstreams with one: {known}); pass -c, e.g. -c {tasks.configs_dir()}/<task>.yaml"
        )
    path = tasks.config_path(keys[0])
    if not path.is_file():
        raise FileNotFoundError(f"default config for downstream {downstream!r} is missing: {path}; pass -c")
    return path


@dataclass
class _Option:
    index: int  # index of the flag's token in argv
    flag: str
    value: str
    form: str  # "separate" (-c X), "equals" (--config=X) or "attached" (-cX)


def _split_token(token: str) -> tuple[str, str | None, str]:
    """(flag, inline value or None, form) of one argv token, argparse's way."""
    if token.startswith("--") and "=" in token:
        flag, value = token.split("=", 1)
        return flag, value, "equals"
    if not token.startswith("--") and len(token) > 2 and token[:2] in _FLAGS:
        return token[:2], token[2:].removeprefix("="), "attached"
    return token, None, "separate"


def scan_options(argv: list[str]) -> dict[str, _Option]:
    """The options of ``_FLAGS`` present in ``argv``, by dest (the last one wins, as in argparse)."""
    found, i = {}, 0
    while i < len(argv) and argv[i] != "--":
        start = i
        flag, value, form = _split_token(argv[i])
        if flag in _FLAGS:
            if value is None:
                if i + 1 >= len(argv):
                    break  # s3prl's own parser reports the missing value
                i += 1
                value = argv[i]
            found[_FLAGS[flag]] = _Option(start, flag, value, form)
        i += 1
    return found


def _replace(argv: list[str], option: _Option, value: str) -> None:
    if option.form == "separate":
        argv[option.index + 1] = value
    elif option.form == "equals":
        argv[option.index] = f"{option.flag}={value}"
    else:
        argv[option.index] = option.flag + value


def _absolute(path: str, cwd: Path) -> str:
    return os.path.abspath(os.path.join(cwd, os.path.expanduser(path)))


def _exists_in(path: str, cwd: Path) -> bool:
    return bool(path) and not os.path.isabs(path) and os.path.exists(os.path.join(cwd, path))


def absolute_override(override: str, cwd: Path) -> str:
    """Make the paths inside ``-o`` absolute (s3prl's syntax: ``key=value,,key=value``).

    ``args.<path option>`` values always; ``args.upstream_ckpt`` and
    ``config.*`` values when they name something that exists under ``cwd``.
    Quotes around a value are kept.
    """
    parts = []
    for option in override.split(",,"):
        key, sep, value = option.partition("=")
        fields = key.strip().split(".")
        raw = value.strip()
        quote = raw[0] if len(raw) >= 2 and raw[0] in "'\"" and raw[-1] == raw[0] else ""
        raw = raw[1:-1] if quote else raw
        always = fields[0] == "args" and fields[-1] in _PATH_DESTS
        maybe = (fields[0] == "config" or fields[-1] == "upstream_ckpt") and _exists_in(raw, cwd)
        if sep and raw and (always or maybe):
            value = quote + _absolute(raw, cwd) + quote
        parts.append(key + sep + value)
    return ",,".join(parts)


def prepare_argv(argv: list[str], cwd: Path, cuda_available: bool) -> list[str]:
    """Rewrite s3prl's arguments to run from its package directory.

    Paths become absolute against ``cwd``; ``-c`` defaults to our config for
    ``-d``; ``-p`` defaults to ``cwd/result/downstream/<-n>`` (s3prl's own
    default, which would otherwise land inside s3prl's package); ``--device
    cpu`` is added when no GPU is available and ``--device`` was not given.
    """
    out, opts = list(argv), scan_options(argv)
    for dest in _PATH_DESTS:
        if dest in opts:
            _replace(out, opts[dest], _absolute(opts[dest].value, cwd))
    if "upstream_ckpt" in opts and _exists_in(opts["upstream_ckpt"].value, cwd):
        _replace(out, opts["upstream_ckpt"], _absolute(opts["upstream_ckpt"].value, cwd))
    if "evaluate_split" in opts and opts.get("mode") and opts["mode"].value == "inference":
        _replace(out, opts["evaluate_split"], _absolute(opts["evaluate_split"].value, cwd))
    if "override" in opts:
        _replace(out, opts["override"], absolute_override(opts["override"].value, cwd))
    if "past_exp" not in opts:
        if "config" not in opts and "downstream" in opts:
            out += ["-c", str(config_for_downstream(opts["downstream"].value))]
        if "expdir" not in opts:
            expname = opts["expname"].value if "expname" in opts else "None"  # s3prl's f-string of None
            out += ["-p", _absolute(f"result/downstream/{expname}", cwd)]
    if "device" not in opts and not cuda_available:
        out += ["--device", "cpu"]
    return out


# ------------------------------------------------------------------- preflight
class PreflightError(RuntimeError):
    """What a task needs and lacks, named before s3prl starts."""


def task_of(downstream: str, config: str | None) -> str | None:
    """Our task key for s3prl's ``-d`` (``ctc`` is PR or SF: told apart by the config's name)."""
    from pruned_upstream.s3prl_plugin import tasks

    keys = [spec.key for spec in tasks.TASKS.values() if spec.downstream == downstream]
    if len(keys) > 1 and config:
        keys = [k for k in keys if Path(config).stem.lower() == tasks.TASKS[k].config.removesuffix(".yaml")]
    return keys[0] if len(keys) == 1 else None


def resolve_and_check(argv: list[str]) -> list[str]:
    """Resolve ``${VAR}`` and s3prl-relative paths of ``-c`` into ``<expdir>/superb_config.yaml``
    and run the task's preflight (packages, s3prl files, libsox, data), before s3prl starts.
    """
    import yaml

    from pruned_upstream.s3prl_plugin import preflight as pf

    opts = scan_options(argv)
    if "past_exp" in opts or "config" not in opts or "downstream" not in opts:
        return argv  # resuming (-e): s3prl reuses the saved, already resolved config
    root = pf.installed_s3prl_root()
    with open(opts["config"].value) as f:
        config = yaml.safe_load(f) or {}
    resolved = pf.resolve_config_paths(config, root) if root else config
    task = task_of(opts["downstream"].value, opts["config"].value)
    if task is not None:
        override = opts["override"].value if "override" in opts else None
        problems = pf.preflight(task, root, pf.apply_overrides(resolved, override))
        if problems:
            raise PreflightError(pf.format_problems(problems, task))
    if resolved == config or "expdir" not in opts:
        return argv
    expdir = Path(opts["expdir"].value)
    expdir.mkdir(parents=True, exist_ok=True)
    target = expdir / "superb_config.yaml"
    target.write_text(yaml.safe_dump(resolved, sort_keys=False))
    out = list(argv)
    _replace(out, opts["config"], str(target))
    return out


# ------------------------------------------------------------------- the log
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


# --------------------------------------------------------------- the runner
@contextlib.contextmanager
def _s3prl_process_state(argv: list[str], log: LogSink):
    """sys.argv, tee'd streams, cwd = s3prl's package; all restored on exit."""
    import s3prl

    saved = sys.argv, sys.stdout, sys.stderr, builtins.isinstance, os.getcwd()
    sys.argv = [PROG, *argv]
    sys.stdout = TeeStream(saved[1], log, "stdout")
    sys.stderr = TeeStream(saved[2], log, "stderr")
    try:
        os.chdir(Path(s3prl.__file__).resolve().parent)
        yield
    finally:
        tees = {id(sys.stdout): saved[1], id(sys.stderr): saved[2]}
        for handler in logging.root.handlers:  # s3prl's logging.basicConfig may hold our tee
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in tees:
                handler.setStream(tees[id(handler.stream)])
        sys.argv, sys.stdout, sys.stderr, builtins.isinstance = saved[:4]  # s3prl's hack_isinstance wraps it
        os.chdir(saved[4])
        log.close()


@contextlib.contextmanager
def _report_expdir(module, on_expdir: Callable[[Path], None]):
    """Call ``on_expdir`` with the expdir s3prl settles on (after -e, -a and -o)."""
    original = module.get_downstream_args

    def wrapped():
        args, config, backup_files = original()
        on_expdir(Path(args.expdir).resolve())
        return args, config, backup_files

    module.get_downstream_args = wrapped
    try:
        yield
    finally:
        module.get_downstream_args = original


def exit_code(code) -> int:
    """The process exit status ``sys.exit(code)`` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_superb(argv: list[str], upstreams: dict[str, Callable] | None = None) -> int:
    """Run ``s3prl.run_downstream`` with ``argv`` in this process; returns its exit status.

    ``upstreams`` is passed to :func:`register_upstreams` (default: our
    hubconf's entries). A missing default config gives 2, as s3prl's own
    usage errors do; an exception inside s3prl is printed (and logged) and
    gives 1.
    """
    import torch

    torch.serialization.add_safe_globals([argparse.Namespace])  # s3prl ckpts store Args
    register_upstreams(upstreams)
    try:
        argv = prepare_argv(argv, Path.cwd(), torch.cuda.is_available())
    except (ValueError, FileNotFoundError) as exc:  # no default -c: a usage error, as argparse's
        print(f"pruned-upstream superb: error: {exc}", file=sys.stderr)
        return 2
    try:
        argv = resolve_and_check(argv)
    except PreflightError as exc:
        print(f"pruned-upstream superb: {exc}", file=sys.stderr)
        return 2
    import s3prl.run_downstream as run_downstream

    log = LogSink(f"### pruned-upstream superb {shlex.join(argv)}  ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    with _s3prl_process_state(argv, log), _report_expdir(run_downstream, lambda d: log.open(d / LOG_NAME)):
        try:
            run_downstream.main()
            return 0
        except SystemExit as exc:
            return exit_code(exc.code)
        except Exception:
            traceback.print_exc()
            return 1
