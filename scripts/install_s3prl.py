"""Install s3prl 0.4.18 from its source tree (editable), as SUPERB's instructions do.

    python scripts/install_s3prl.py [--venv .venv]      # run by `make install`

The PyPI sdist of s3prl 0.4.18 lacks files six SUPERB tasks read (ctc/corpus,
preprocess/, vocabularies, lexicons, meta data); a clone of s3prl's repository
has them (docs/environment.md). In order:

1. the `s3prl` Python would import already sits in a source tree: nothing to do;
2. `S3PRL_SRC` names a directory (a clone) or a `.tar.gz` of the tree: it is
   unpacked into VENV/src/ if needed and installed with `pip install -e --no-deps`;
3. otherwise s3prl's repository is cloned at the pinned commit into VENV/src/;
4. when neither works, one line says so and the PyPI sdist stays (the line names the tasks that run
   on it: KS, IC and QbE, and SID with data that brings its own split list, as the demo's).

Before and after, leftovers of older SUPERB runs are removed where Python looks for `s3prl` (every
sys.path entry): until the runner moved s3prl's dataset caches into the experiment directories
(pruned_upstream/s3prl_plugin/caches.py), SID and ASV wrote `downstream/voxceleb1/.cache/` and
`downstream/sv_voxceleb1/.wav_lengths/` into s3prl's package. pip does not remove them when it
uninstalls the PyPI copy, and the directory left (no `__init__.py`) is a namespace package that
shadows the editable install of the source tree. A leftover holding anything else is not touched:
the script stops with the `rm -rf` command to run.

`DSCORE_ROOT` (a dscore clone or a `.tar.gz` of it, the DER scorer of s3prl's
diarization recipe) is unpacked into VENV/src/ the same way when it is an archive.
Standard library only: it runs before anything else is importable.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

S3PRL_COMMIT = "ec8064b5889f81ca460fbe2c094ce576a6f120b7"  # the commit that sets version.txt to 0.4.18
S3PRL_REPO = "https://github.com/s3prl/s3prl"
# Files of the source tree that the sdist lacks: their presence marks a source tree.
SOURCE_MARKERS = ("downstream/ctc/corpus/librispeech.py", "preprocess/generate_len_for_bucket.py",
                  "downstream/asr/char.dict")
# What SUPERB runs of older versions wrote inside s3prl's package (docs/tasks/caches.md).
LEFTOVERS = ("downstream/voxceleb1/.cache", "downstream/sv_voxceleb1/.wav_lengths")
HOW = ("set S3PRL_SRC to a clone of https://github.com/s3prl/s3prl at commit ec8064b5 (0.4.18) "
       "or to a .tar.gz of that tree, then run `make install` again")


def package_dir(python: str) -> Path | None:
    """The directory of the `s3prl` package that `python` imports (without importing it)."""
    code = ("import importlib.util as u; s = u.find_spec('s3prl'); "
            "print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()
    return Path(out) if out else None


def search_path(python: str) -> list[Path]:
    """The directories `python` searches for top-level packages (its sys.path, without the current directory)."""
    code = "import sys; print('\\n'.join(p for p in sys.path if p))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/").stdout
    return [Path(line) for line in out.splitlines() if line and Path(line).is_dir()]


def _is_leftover(path: Path, pkg: Path) -> bool:
    rel = path.relative_to(pkg)
    return "__pycache__" in rel.parts or any(rel.is_relative_to(d) for d in LEFTOVERS)


def clear_leftovers(python: str) -> list[Path]:
    """Remove what older SUPERB runs left in s3prl packages on `python`'s path; returns what was removed.

    An `s3prl/` with `__init__.py` (an installed copy): its cache directories. One without (what pip
    leaves when it uninstalls a copy whose caches were written into it): the whole directory, when all
    it holds is such caches and `__pycache__`; otherwise SystemExit with the command to remove it.
    """
    removed = []
    for entry in search_path(python):
        pkg = entry / "s3prl"
        if not pkg.is_dir() or pkg.is_symlink():
            continue
        if (pkg / "__init__.py").exists():
            for rel in LEFTOVERS:
                if (pkg / rel).is_dir() and not (pkg / rel).is_symlink():
                    shutil.rmtree(pkg / rel)
                    removed.append(pkg / rel)
            continue
        files = [p for p in pkg.rglob("*") if not p.is_dir() or p.is_symlink()]
        foreign = [p for p in files if not _is_leftover(p, pkg)]
        if foreign:
            raise SystemExit(f"install_s3prl: {pkg} has no __init__.py (what pip leaves of an uninstalled s3prl) and "
                             f"holds {foreign[0].relative_to(pkg)}: it would shadow the installed s3prl; remove it "
                             f"with `rm -rf {shlex.quote(str(pkg))}`, then run `{shlex.quote(python)} "
                             f"scripts/install_s3prl.py --venv {shlex.quote(str(Path(python).parent.parent))}`")
        shutil.rmtree(pkg)
        removed.append(pkg)
    for path in removed:
        print(f"install_s3prl: removed {path} (s3prl caches of an older SUPERB run; they now live in the "
              f"experiment directories)")
    return removed


RUNNABLE = """import sys
from pathlib import Path
from pruned_upstream.s3prl_plugin import preflight as pf
from pruned_upstream.s3prl_plugin.tasks import TASKS
root, full, own = Path(sys.argv[1]), [], []
for key, spec in TASKS.items():
    missing = {f for f in (*spec.s3prl_files, *spec.tool_files) if not (root / f).exists()}
    if not missing:
        full.append(key)
    elif missing <= pf.replaced_files(key, root, {}):
        own.append(key)
print(" ".join(full)); print(" ".join(own))
"""


def runnable_tasks(python: str, pkg: Path | None) -> str:
    """What runs on the s3prl at `pkg` (our task table's file lists), in words."""
    if pkg is None:
        return "no s3prl is installed"
    proc = subprocess.run([python, "-c", RUNNABLE, str(pkg)], capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != 2:
        return "see docs/environment.md for the tasks that run on it"
    full, own = lines
    text = f"{', '.join(full.split()) or 'no task'} run on it"
    if own:
        text += f"; {', '.join(own.split())} only with data that brings its own copy of the missing s3prl files"
    return text + "; the other tasks need s3prl's source tree"


def missing_markers(pkg: Path | None) -> list[str]:
    return list(SOURCE_MARKERS) if pkg is None else [m for m in SOURCE_MARKERS if not (pkg / m).exists()]


def is_source_tree(pkg: Path | None) -> bool:
    return not missing_markers(pkg)


def unpack(archive: Path, dest_root: Path) -> Path:
    """Unpack a .tar.gz (once) into dest_root; returns the tree's top directory."""
    with tarfile.open(archive) as tar:
        tops = {Path(m.name).parts[0] for m in tar.getmembers() if m.name not in ("", ".")}
        if len(tops) != 1:
            raise SystemExit(f"install_s3prl: {archive} should hold one top directory, found {sorted(tops)[:5]}")
        top = dest_root / tops.pop()
        if not top.is_dir():
            dest_root.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest_root, filter="data")
            print(f"install_s3prl: {archive.name} unpacked at {top}")
    return top


def tree_from(value: str, src: Path) -> Path:
    path = Path(value).expanduser().resolve()
    if path.is_dir():
        return path
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return unpack(path, src)
    raise SystemExit(f"install_s3prl: {value} is neither a directory nor a .tar.gz")


def clone(src: Path) -> Path | None:
    dest = src / f"s3prl-{S3PRL_COMMIT[:8]}"
    if (dest / "s3prl").is_dir():
        return dest
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        subprocess.run(["git", "clone", "-q", "--filter=blob:none", S3PRL_REPO, str(dest)], check=True,
                       timeout=600, env=env, stdin=subprocess.DEVNULL, capture_output=True)
        subprocess.run(["git", "-C", str(dest), "checkout", "-q", S3PRL_COMMIT], check=True, timeout=600,
                       env=env, stdin=subprocess.DEVNULL, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=".venv")
    parser.add_argument("--require", action="store_true", help="exit 1 when no source tree can be installed")
    args = parser.parse_args()
    venv = Path(args.venv).resolve()
    python, src = str(venv / "bin" / "python"), venv / "src"
    if os.environ.get("DSCORE_ROOT", "").endswith((".tar.gz", ".tgz")):
        tree_from(os.environ["DSCORE_ROOT"], src)  # the venv's copy: what tests and the demo fall back to
    clear_leftovers(python)
    current = package_dir(python)
    if os.environ.get("S3PRL_SRC"):
        tree = tree_from(os.environ["S3PRL_SRC"], src)
        if is_source_tree(current) and current == tree / "s3prl":
            return 0
    elif is_source_tree(current):
        return 0
    else:
        tree = clone(src)
        if tree is None:
            what = "error" if args.require else f"keeping the PyPI sdist ({runnable_tasks(python, current)})"
            print(f"install_s3prl: {what}: s3prl's source tree is not available (no S3PRL_SRC, and {S3PRL_REPO} "
                  f"could not be cloned); {HOW}", file=sys.stderr)
            return 1 if args.require else 0
    if not (tree / "s3prl").is_dir():
        raise SystemExit(f"install_s3prl: {tree} has no s3prl/ package directory: not an s3prl source tree")
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "-e",
                    str(tree)], check=True, stdin=subprocess.DEVNULL)
    clear_leftovers(python)  # what pip left of the copy it uninstalled
    pkg = package_dir(python)
    if not is_source_tree(pkg):
        raise SystemExit(f"install_s3prl: after installing {tree}, Python imports s3prl from {pkg}, "
                         f"which lacks {', '.join(missing_markers(pkg))}; if that is what remains of an uninstalled "
                         f"copy, remove it (`rm -rf {shlex.quote(str(pkg))}`) and run "
                         f"`{shlex.quote(python)} scripts/install_s3prl.py --venv {shlex.quote(str(venv))}`")
    print(f"install_s3prl: s3prl from the source tree {tree}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
