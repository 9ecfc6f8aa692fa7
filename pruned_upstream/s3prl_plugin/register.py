"""``pruned-upstream register-s3prl``: add our upstream to an s3prl source checkout.

s3prl's documented way to add an upstream (``s3prl/upstream/README.md``) is a
folder ``s3prl/upstream/<name>/`` holding ``expert.py`` and ``hubconf.py``,
plus one ``from s3prl.upstream.<name>.hubconf import *`` line in
``s3prl/hub.py``. The files written here only import from our installed
package, so the checkout never holds a copy of our code. Both directions are
idempotent: registering twice, or unregistering what is not there, changes
nothing. Only files that carry our marker line are ever rewritten or removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

UPSTREAM_NAME = "pruned_wavlm"
HUB_NAMES = ("pruned_wavlm_local",)
MARKER = "# Written by `pruned-upstream register-s3prl CHECKOUT`; undo with `pruned-upstream register-s3prl CHECKOUT --remove`."
HUB_LINE = f"from s3prl.upstream.{UPSTREAM_NAME}.hubconf import *  # pruned-upstream"


def package_dir(checkout: Path) -> Path:
    """The ``s3prl`` package directory of a checkout (or the package directory itself)."""
    checkout = Path(checkout)
    for candidate in (checkout / "s3prl", checkout):
        if (candidate / "hub.py").is_file() and (candidate / "upstream").is_dir():
            return candidate
    raise FileNotFoundError(f"{checkout} is not an s3prl checkout: no s3prl/hub.py with s3prl/upstream/ beside it")


def upstream_files(names: Sequence[str] = HUB_NAMES) -> dict[str, str]:
    """File name -> text of the upstream folder."""
    imports = ", ".join(names)
    return {
        "__init__.py": f"{MARKER}\n",
        "expert.py": f"{MARKER}\nfrom pruned_upstream.s3prl_plugin.expert import UpstreamExpert  # noqa: F401\n",
        "hubconf.py": f"{MARKER}\nfrom pruned_upstream.s3prl_plugin.hubconf import {imports}  # noqa: F401\n",
    }


def _ours(path: Path) -> bool:
    return path.read_text(encoding="utf-8").startswith(MARKER)


def _hub_lines(hub: Path) -> list[str]:
    return hub.read_text(encoding="utf-8").splitlines(keepends=True)


def _insert_hub_line(lines: list[str]) -> list[str]:
    """``lines`` with ``HUB_LINE`` after the last ``from s3prl.upstream.`` import (else at the top)."""
    last = max((i for i, line in enumerate(lines) if line.startswith("from s3prl.upstream.")), default=-1)
    lines = list(lines)
    if last >= 0 and not lines[last].endswith("\n"):  # a hub.py that ends without a newline
        lines[last] += "\n"
    return lines[: last + 1] + [HUB_LINE + "\n"] + lines[last + 1 :]


def register_s3prl(checkout: Path, names: Sequence[str] = HUB_NAMES) -> list[Path]:
    """Write ``s3prl/upstream/pruned_wavlm/`` and the ``hub.py`` import; returns the paths changed.

    A file of that folder that exists without our marker is someone else's:
    it raises ``FileExistsError`` and nothing is written.
    """
    pkg = package_dir(checkout)
    folder = pkg / "upstream" / UPSTREAM_NAME
    files = {folder / name: text for name, text in upstream_files(names).items()}
    foreign = [p for p in files if p.exists() and not _ours(p)]
    if foreign:
        raise FileExistsError(f"not written by pruned-upstream, refusing to overwrite: {[str(p) for p in foreign]}")
    changed = []
    folder.mkdir(exist_ok=True)
    for path, text in files.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    hub = pkg / "hub.py"
    lines = _hub_lines(hub)
    if HUB_LINE + "\n" not in lines:
        hub.write_text("".join(_insert_hub_line(lines)), encoding="utf-8")
        changed.append(hub)
    return changed


def unregister_s3prl(checkout: Path) -> list[Path]:
    """Remove what :func:`register_s3prl` wrote; returns the paths changed."""
    pkg = package_dir(checkout)
    folder = pkg / "upstream" / UPSTREAM_NAME
    changed = []
    hub = pkg / "hub.py"
    lines = _hub_lines(hub)
    if HUB_LINE + "\n" in lines:
        hub.write_text("".join(line for line in lines if line != HUB_LINE + "\n"), encoding="utf-8")
        changed.append(hub)
    for name in upstream_files():
        path = folder / name
        if path.exists() and _ours(path):
            path.unlink()
            changed.append(path)
    cache = folder / "__pycache__"
    if cache.is_dir() and folder.is_dir() and {p.name for p in folder.iterdir()} == {"__pycache__"}:
        for stale in cache.iterdir():
            stale.unlink()
        cache.rmdir()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        changed.append(folder)
    return changed
