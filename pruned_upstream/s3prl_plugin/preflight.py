"""Before a SUPERB run: is everything a task needs in place, and if not, how to get it.

A task needs (``tasks.TaskSpec``): files from s3prl's source tree that the
PyPI sdist of s3prl 0.4.18 lacks, Python packages its downstream imports,
``libsox.so`` for ``torchaudio.sox_effects``, writable cache directories inside
s3prl's package, and the data directories its config names.

Path convention of ``downstream_configs/*.yaml``:

* ``${NAME}`` anywhere in a string is the environment variable NAME (data roots);
* a string starting with ``downstream/`` or ``./downstream/`` names a file of
  s3prl's package directory, as in s3prl's own configs (which s3prl's runner
  opens relative to the working directory, i.e. run from that directory).

``resolve_config_paths`` turns both into absolute paths, so the runner works
from any working directory. Nothing here imports torch or s3prl.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..small_files import read_yaml_file
from .tasks import COMMON_PACKAGES, S3PRL_COMMIT, S3PRL_REPO, DataPath, Package, TaskSpec, config_path, get_task

S3PRL_RELATIVE = ("downstream/", "./downstream/")
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
LIB_DIRS = ("/lib", "/usr/lib", "/usr/local/lib", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
            "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64")
SOURCE_TREE = (
    f"git clone {S3PRL_REPO} && git -C s3prl checkout {S3PRL_COMMIT[:8]} (0.4.18) && "
    "pip install -e ./s3prl --no-deps; the PyPI sdist of s3prl 0.4.18 does not ship it"
)


@dataclass(frozen=True)
class Problem:
    """One missing thing: ``kind`` in s3prl_file, s3prl_tool, package, system, permission, env, data."""

    kind: str
    name: str
    remedy: str


def installed_s3prl_root() -> Path | None:
    """s3prl's package directory (``.../s3prl``) without importing it; None if absent."""
    spec = importlib.util.find_spec("s3prl")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def load_task_config(task: str) -> dict:
    """Our YAML for ``task`` as a dict, unresolved (``${...}`` and s3prl-relative paths kept)."""
    return read_yaml_file(config_path(task))  # regular, bounded, no YAML aliases (small_files)


def effective_config(task: str, s3prl_root: Path, override: str | None = None,
                     environ: Mapping[str, str] | None = None) -> dict:
    """Our config for ``task`` as the runner will see it: ``-o`` overrides applied, paths resolved."""
    return resolve_config_paths(apply_overrides(load_task_config(task), override), s3prl_root, environ)


def _walk(value, fn):
    """Apply ``fn`` to every string inside nested dicts and lists; returns new containers."""
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace every ``${NAME}`` whose NAME is set; unset ones stay for ``preflight`` to report."""
    return ENV_PATTERN.sub(lambda m: environ.get(m.group(1), m.group(0)), text)


def resolve_config_paths(config: dict, s3prl_root: Path, environ: Mapping[str, str] | None = None) -> dict:
    """A copy of ``config`` with ``${NAME}`` expanded and s3prl-relative paths made absolute.

    ``downstream/x`` and ``./downstream/x`` become ``s3prl_root / "downstream/x"``;
    every other string is left as it is (absolute data paths, names, ``-math.inf``).
    """
    environ = os.environ if environ is None else environ
    root = Path(s3prl_root)

    def resolve(text: str) -> str:
        text = expand_env(text, environ)
        if text.startswith(S3PRL_RELATIVE):
            return str(root / text.removeprefix("./"))
        return text

    return _walk(config, resolve)


def apply_overrides(config: dict, override: str | None) -> dict:
    """A copy of ``config`` with s3prl's ``-o`` overrides of ``config.*`` fields applied.

    Same syntax as s3prl (``utility/helper.py`` ``override``): ``,,``-separated
    ``config.a.b=value``; ``args.*`` entries are ignored here. Values are parsed
    as Python literals (s3prl uses ``eval``), falling back to the raw string.
    """
    config = copy.deepcopy(config)
    for option in (override or "").split(",,"):
        if not option.strip() or option.lower().strip() == "none":
            continue
        key, _, raw = option.strip().partition("=")
        first, *fields = key.strip().split(".")
        if first != "config" or not fields:
            continue
        node = config
        for field in fields[:-1]:
            node = node.setdefault(field, {})
        node[fields[-1]] = _literal(raw.strip())
    return config


def _literal(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def get_field(config: dict, dotted: str):
    """``config["a"]["b"]`` for ``"a.b"``; KeyError names the missing part."""
    node = config
    for i, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config has no {'.'.join(dotted.split('.')[: i + 1])!r} (looking up {dotted!r})")
        node = node[part]
    return node


def check_packages(packages: tuple[Package, ...]) -> list[Problem]:
    """Packages that cannot be imported, or whose major version is too new."""
    problems = []
    for pkg in packages:
        remedy = f"pip install '{pkg.pip}' (or pip install -e '.[superb]' in pruned-upstream); needed by {pkg.why}"
        if importlib.util.find_spec(pkg.module) is None:
            problems.append(Problem("package", pkg.pip, remedy))
        elif pkg.below_major is not None and _major_version(pkg.module) >= pkg.below_major:
            problems.append(Problem("package", pkg.pip, f"installed {pkg.module} is too new; {remedy}"))
    return problems


def _major_version(module: str) -> int:
    names = importlib.metadata.packages_distributions().get(module, [module])
    return int(importlib.metadata.version(names[0]).split(".")[0])


def _strings(value) -> list[str]:
    """Every string inside nested dicts and lists (collected by ``_walk``)."""
    found: list[str] = []
    _walk(value, lambda text: found.append(text) or text)
    return found


def replaced_files(task: str, s3prl_root: Path, config: dict) -> set[str]:
    """s3prl files our config for ``task`` names that the effective ``config`` no longer names.

    Small data brings its own lexicon or split list through ``-o``; the s3prl
    file it replaces (absent from some copies of s3prl's tree) is then not needed.
    """
    named_now = {text.strip() for text in _strings(config)}
    ours = {text.strip().removeprefix("./") for text in _strings(load_task_config(task))
            if text.strip().startswith(S3PRL_RELATIVE)}
    return {rel for rel in ours if str(s3prl_root / rel) not in named_now and rel not in named_now
            and f"./{rel}" not in named_now}


def check_s3prl_files(spec: TaskSpec, s3prl_root: Path, replaced: set[str] = frozenset()) -> list[Problem]:
    """s3prl source-tree files the task reads (``s3prl_file``) or its scripts (``s3prl_tool``).

    ``replaced``: files the run's config no longer names (``replaced_files``): not needed.
    """
    problems = [
        Problem(kind, rel, f"not under {s3prl_root}: {SOURCE_TREE}")
        for kind, files in (("s3prl_file", spec.s3prl_files), ("s3prl_tool", spec.tool_files))
        for rel in files
        if not (s3prl_root / rel).exists() and rel not in replaced
    ]
    for rel in spec.writable_dirs:
        path = s3prl_root / rel
        if path.is_dir() and not os.access(path, os.W_OK):
            problems.append(Problem("permission", str(path), "s3prl caches file lists here: make it writable"))
    return problems


def check_libsox(lib_dirs: tuple[str, ...] = LIB_DIRS) -> list[Problem]:
    """``libsox.so`` (the unversioned name torchaudio's sox extension dlopens)."""
    dirs = [*lib_dirs, *os.environ.get("LD_LIBRARY_PATH", "").split(":")]
    if any(d and (Path(d) / "libsox.so").exists() for d in dirs):
        return []
    return [Problem("system", "libsox.so", "apt-get install libsox-dev (torchaudio.sox_effects needs it)")]


def _env_names(value) -> Iterator[str]:
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str):
            yield from ENV_PATTERN.findall(text)


def check_data(spec: TaskSpec, config: dict) -> list[Problem]:
    """The task's data locations in ``config`` (resolved) exist and hold their markers."""
    problems = []
    for data in spec.data_paths:
        value = get_field(config, data.key)
        unset = list(_env_names(value))
        if unset:
            remedy = f"export {unset[0]}=... or pass -o config.{data.key}=PATH ({spec.data}: {spec.data_source})"
            problems.append(Problem("env", unset[0], f"{data.key} = {value!r}: {remedy}"))
            continue
        problems += _check_data_path(spec, data, Path(str(value)))
    unique: dict[tuple[str, str], Problem] = {}
    for problem in problems:  # one report per variable or path (SD names one variable thrice)
        unique.setdefault((problem.kind, problem.name), problem)
    return list(unique.values())


def _check_data_path(spec: TaskSpec, data: DataPath, path: Path) -> list[Problem]:
    where = f"({data.key}; {spec.data}: {spec.data_source})"
    if not (path.is_file() if data.is_file else path.is_dir()):
        return [Problem("data", str(path), f"not found {where}")]
    return [
        Problem("data", str(path / marker), f"not found inside {path} {where}")
        for marker in data.markers
        if not (path / marker).exists()
    ]


def preflight(task: str, s3prl_root: Path | None = None, config: dict | None = None, *,
              lib_dirs: tuple[str, ...] = LIB_DIRS) -> list[Problem]:
    """Everything ``task`` needs that is missing; an empty list means ready to run.

    ``s3prl_root`` defaults to the installed s3prl package; ``config`` (resolved
    by ``resolve_config_paths``, overrides applied) adds the data checks.
    """
    spec = get_task(task)
    problems = check_packages(COMMON_PACKAGES + spec.packages)
    root = Path(s3prl_root) if s3prl_root is not None else installed_s3prl_root()
    if root is None:
        problems.append(Problem("package", "s3prl", f"s3prl is not installed: {SOURCE_TREE}"))
    else:
        replaced = replaced_files(spec.key, root, config) if config is not None else set()
        problems += check_s3prl_files(spec, root, replaced)
    if spec.needs_libsox:
        problems += check_libsox(lib_dirs)
    if config is not None:
        problems += check_data(spec, config)
    return problems


def format_problems(problems: list[Problem], task: str | None = None) -> str:
    """A readable report, one line per problem, grouped by kind."""
    head = f"SUPERB {get_task(task).key}" if task else "SUPERB"
    if not problems:
        return f"{head}: preflight found nothing missing."
    lines = [f"{head}: {len(problems)} thing(s) missing:"]
    for kind in dict.fromkeys(p.kind for p in problems):
        group = [p for p in problems if p.kind == kind]
        if len(group) > 1 and len({p.remedy for p in group}) == 1:  # say a shared remedy once
            lines.append(f"  [{kind}] {group[0].remedy}")
            lines += [f"    {p.name}" for p in group]
        else:
            lines.append(f"  [{kind}]")
            lines += [f"    {p.name}: {p.remedy}" for p in group]
    return "\n".join(lines)
