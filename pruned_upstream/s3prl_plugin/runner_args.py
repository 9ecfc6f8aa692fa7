"""s3prl's run_downstream arguments, rewritten so that the runner works from s3prl's package directory.

Paths become absolute, ``-c`` defaults to our config for the task, ``-p``
to s3prl's own default outside its package, ``--device cpu`` is added without
a GPU; ``resolve_and_check`` resolves ``${VAR}`` and s3prl-relative paths of the
config into ``<expdir>/superb_config.yaml`` and runs the task's preflight.
"""

from __future__ import annotations

import ast
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from pruned_upstream.s3prl_plugin import preflight as pf
from pruned_upstream.s3prl_plugin import tasks
from pruned_upstream.small_files import read_yaml_file
from pruned_upstream.s3prl_plugin.override_quoting import s3prl_literal

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


def config_for_downstream(downstream: str) -> Path:
    """Our default ``-c`` for an s3prl downstream name (``-d``), from ``tasks.TASKS``.

    ``ctc`` serves both PR and SF, so it has no default: pass ``-c``.
    """
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


def _unquoted(raw: str) -> str:
    """The string a quoted Python literal stands for (as s3prl's eval reads it), else ``raw``."""
    if len(raw) >= 2 and raw[0] in "'\"" and raw[-1] == raw[0]:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw[1:-1]
        return value if isinstance(value, str) else raw
    return raw


def absolute_override(override: str, cwd: Path) -> str:
    """Make the paths inside ``-o`` absolute (s3prl's syntax: ``key=value,,key=value``).

    ``args.<path option>`` values always; ``args.upstream_ckpt`` and
    ``config.*`` values when they name something that exists under ``cwd``.
    A rewritten value is written by ``override_quoting.s3prl_literal`` (a path
    holding ``=``, ``,``, quotes or spaces stays one string for s3prl).
    """
    parts = []
    for option in override.split(",,"):
        key, sep, value = option.partition("=")
        fields = key.strip().split(".")
        raw = _unquoted(value.strip())
        always = fields[0] == "args" and fields[-1] in _PATH_DESTS
        maybe = (fields[0] == "config" or fields[-1] == "upstream_ckpt") and _exists_in(raw, cwd)
        if sep and raw and (always or maybe):
            value = s3prl_literal(_absolute(raw, cwd))
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
    keys = [spec.key for spec in tasks.TASKS.values() if spec.downstream == downstream]
    if len(keys) > 1 and config:
        keys = [k for k in keys if Path(config).stem.lower() == tasks.TASKS[k].config.removesuffix(".yaml")]
    return keys[0] if len(keys) == 1 else None


def resolve_and_check(argv: list[str]) -> list[str]:
    """Resolve ``${VAR}`` and s3prl-relative paths of ``-c`` into ``<expdir>/superb_config.yaml``
    and run the task's preflight (packages, s3prl files, libsox, data), before s3prl starts.
    """
    argv = resolve_past_exp(argv)
    opts = scan_options(argv)
    if "past_exp" in opts or "config" not in opts or "downstream" not in opts:
        return argv  # resuming (-e): s3prl reuses the saved, already resolved config
    root = pf.installed_s3prl_root()
    config = read_yaml_file(opts["config"].value) or {}  # regular, bounded, no YAML aliases
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


# ------------------------------------------------------------------- resuming (-e)
_STATES = re.compile(r"states-(\d+)\.ckpt")


def complete_checkpoint(path: Path) -> bool:
    """torch.save's zip format ends with the zip's central directory: a save cut short (a kill, a full
    disk) has none. A legacy (non-zip) pickle cannot be checked and is let through."""
    with open(path, "rb") as f:
        first = f.read(1)
    return first == b"\x80" or zipfile.is_zipfile(path)


def states_by_step(expdir: Path) -> list[Path]:
    """``expdir``'s ``states-N.ckpt``, in increasing N."""
    found = [(int(m.group(1)), p) for p in Path(expdir).glob("states-*.ckpt") if (m := _STATES.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def resolve_past_exp(argv: list[str]) -> list[str]:
    """``-e DIR``: its newest complete ``states-N.ckpt`` (s3prl would take the newest, even one cut
    short); ``-e FILE`` cut short: a PreflightError naming the newest complete one to use instead."""
    opts = scan_options(argv)
    if "past_exp" not in opts:
        return argv
    path = Path(opts["past_exp"].value)
    if path.is_dir():
        states = states_by_step(path)
        good = [p for p in states if complete_checkpoint(p)]
        if not good:
            raise PreflightError(f"-e {path}: no complete states-*.ckpt in the directory "
                                 f"({len(states)} incomplete); train it again with -p {path}")
        for bad in states[states.index(good[-1]) + 1:]:
            print(f"pruned-upstream superb: skipping {bad}: incomplete (cut short while saving)")
        out = list(argv)
        _replace(out, opts["past_exp"], str(good[-1]))
        return out
    if path.is_file() and not complete_checkpoint(path):
        match = _STATES.fullmatch(path.name)
        earlier = [p for p in states_by_step(path.parent) if match and complete_checkpoint(p)
                   and int(_STATES.fullmatch(p.name).group(1)) < int(match.group(1))]
        hint = f"; resume from {earlier[-1]} (-e {earlier[-1]}) or -e {path.parent}" if earlier else ""
        raise PreflightError(f"-e {path}: an incomplete checkpoint (the run was stopped while saving it?){hint}")
    return argv
