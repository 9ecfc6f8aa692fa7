"""Third-party scoring tools that SUPERB's recipes call but s3prl does not ship.

dscore (https://github.com/ftshijt/dscore, the fork s3prl's
``downstream/diarization/score.sh`` names) scores SD's RTTM files. Our code
finds it through the environment variable ``DSCORE_ROOT``: a directory holding
``score.py`` (a clone), or a ``.tar.gz`` / ``.tgz`` / ``.tar`` of that tree,
which :func:`dscore_root` unpacks once into a cache directory.

dscore's ``scorelib/metrics.py`` uses ``np.int``, an alias NumPy removed in
1.24; ``python -m pruned_upstream.s3prl_plugin.third_party dscore ARGS`` runs
dscore's own ``score.py`` unchanged with that alias restored (``int``, what it
always meant). Nothing here imports torch or s3prl.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

DSCORE_ENV = "DSCORE_ROOT"
DSCORE_URL = "https://github.com/ftshijt/dscore"
DSCORE_PACKAGES = ("numpy", "scipy", "intervaltree", "tabulate")  # dscore's requirements.txt
CACHE_ENV = "PRUNED_UPSTREAM_CACHE"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ToolNotFoundError(RuntimeError):
    """A scoring tool is not where the environment says; the message is one line."""


def cache_root() -> Path:
    """``$PRUNED_UPSTREAM_CACHE``, else ``$XDG_CACHE_HOME/pruned_upstream``, else ``~/.cache/pruned_upstream``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pruned_upstream"


def _tree_with(root: Path, marker: str) -> Path | None:
    """``root`` or its single top-level directory, whichever holds ``marker``."""
    if (root / marker).is_file():
        return root
    children = [c for c in root.iterdir() if c.is_dir()] if root.is_dir() else []
    if len(children) == 1 and (children[0] / marker).is_file():
        return children[0]
    return None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _extract(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: refuse links out, devices, ...
            tar.extractall(target, filter="data")
        else:  # pragma: no cover - older interpreters
            for member in tar.getmembers():
                if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                    raise ToolNotFoundError(f"{archive}: unsafe path {member.name!r} in the archive")
            tar.extractall(target)


def unpack_once(archive: Path, name: str, marker: str, cache_dir: Path | None = None) -> Path:
    """The directory holding ``marker`` inside ``archive``, unpacked under the cache on first use.

    Keyed by the archive's content (SHA-256), so a changed archive is unpacked
    again; unpacking goes to a temporary directory renamed into place, so an
    interrupted run leaves nothing half-written behind.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    target = cache_dir / name / _file_digest(archive)
    if target.is_dir():
        found = _tree_with(target, marker)
        if found is not None:
            return found
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        try:
            _extract(archive, tmp)
        except (tarfile.TarError, OSError) as err:
            raise ToolNotFoundError(f"{archive}: cannot unpack ({err})") from None
        if _tree_with(tmp, marker) is None:
            raise ToolNotFoundError(f"{archive}: no {marker} at its top level nor in its single top directory")
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: use its copy
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _tree_with(target, marker)


def dscore_root(value: str | None = None, cache_dir: Path | None = None) -> Path:
    """The dscore directory (holding ``score.py``) named by ``value`` or ``$DSCORE_ROOT``.

    A ``.tar.gz`` / ``.tgz`` / ``.tar`` is unpacked once into
    ``cache_dir`` (default :func:`cache_root`). Raises ToolNotFoundError with a
    one-line message when unset or missing.
    """
    value = value if value is not None else os.environ.get(DSCORE_ENV)
    if not value:
        raise ToolNotFoundError(f"{DSCORE_ENV} is not set: point it at a clone of {DSCORE_URL} "
                                "(the directory holding score.py) or a .tar.gz of it")
    path = Path(value).expanduser()
    if path.is_dir():
        found = _tree_with(path, "score.py")
        if found is None:
            raise ToolNotFoundError(f"{DSCORE_ENV}={value}: no score.py in it ({DSCORE_URL})")
        return found.resolve()
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        return unpack_once(path.resolve(), "dscore", "score.py", cache_dir).resolve()
    if path.is_file():
        raise ToolNotFoundError(f"{DSCORE_ENV}={value} is a file but not a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    raise ToolNotFoundError(f"{DSCORE_ENV}={value} does not exist (a clone of {DSCORE_URL}, or a .tar.gz of it)")


def configured_dscore() -> str | None:
    """``$DSCORE_ROOT``, else the copy `make install` unpacked into the venv (``<prefix>/src/dscore-*``)."""
    if os.environ.get(DSCORE_ENV):
        return os.environ[DSCORE_ENV]
    found = sorted(Path(sys.prefix).glob("src/dscore-*/score.py"))
    return str(found[-1].parent) if found else None


def missing_dscore_packages() -> list[str]:
    """The Python packages dscore imports that are not installed here."""
    return [name for name in DSCORE_PACKAGES if importlib.util.find_spec(name) is None]


def dscore_command(args: list[str], python: str | None = None) -> list[str]:
    """argv that runs dscore's ``score.py ARGS`` through :func:`run_dscore` (``$DSCORE_ROOT`` is read there)."""
    return [python or sys.executable, "-m", __name__, *args]


def run_dscore(args: list[str], root: Path | None = None) -> None:
    """Run dscore's own ``score.py`` with ``args`` in this process (it exits via sys.exit on errors)."""
    import runpy

    import numpy as np

    root = root or dscore_root()
    missing = missing_dscore_packages()
    if missing:
        raise ToolNotFoundError(f"dscore needs {', '.join(missing)}: pip install {' '.join(missing)} "
                                "(or pip install -e '.[superb]')")
    if "int" not in np.__dict__:  # removed in NumPy 1.24; scorelib/metrics.py: dtype=np.int
        np.int = int
    sys.path.insert(0, str(root))
    sys.argv = [str(root / "score.py"), *args]
    runpy.run_path(str(root / "score.py"), run_name="__main__")


if __name__ == "__main__":  # `python -m ...third_party ARGS`: dscore's score.py ARGS, untouched (sd_eval runs it)
    try:
        run_dscore(sys.argv[1:])
    except ToolNotFoundError as err:
        print(f"dscore: {err}", file=sys.stderr)
        sys.exit(2)
