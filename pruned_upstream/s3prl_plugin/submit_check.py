"""Our predict.zip against the one s3prl's own submit.py packs from the same directories.

    same, message = check_with_s3prl_submit(card_json)     # (None, why) when submit.py is absent

s3prl's `s3prl/submit/submit.py` (in its source tree, not in the PyPI package)
copies each task's prediction file from the experiment directory given for each
of its arguments into `predict/<task>_public/` and zips that folder. The model
card written by `pruned-upstream submit` names those directories
(`"submission": {"expdirs": {ARG: path relative to the card}}`); here submit.py
runs, unchanged, in a child process on exactly them, into a temporary folder,
and the two zips are compared member by member, byte by byte (names and
contents; zip metadata such as timestamps and member order are not compared).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..small_files import read_small_text
from .preflight import installed_s3prl_root


def s3prl_submit_py() -> Path | None:
    """s3prl's submit.py when the installed s3prl is its source tree; else None."""
    root = installed_s3prl_root()
    script = root / "submit" / "submit.py" if root is not None else None
    return script if script is not None and script.is_file() else None


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist() if not info.is_dir()}


def check_with_s3prl_submit(card_json: Path, timeout: float = 600) -> tuple[bool | None, str]:
    """(True, summary) when s3prl's submit.py packs the same members and bytes as our predict.zip
    beside `card_json`; (False, the differences) when not; (None, why) when it cannot run here."""
    script = s3prl_submit_py()
    if script is None:
        return None, "s3prl's submit.py is not installed (it ships in s3prl's source tree, not the PyPI package)"
    card_json = Path(card_json)
    card = json.loads(read_small_text(card_json))
    expdirs = card.get("submission", {}).get("expdirs", {})
    if not isinstance(expdirs, dict) or not expdirs:
        return False, f"{card_json}: names no experiment directories"
    argv = [f"--{arg}={(card_json.parent / str(path)).resolve()}" for arg, path in sorted(expdirs.items())]
    with tempfile.TemporaryDirectory(prefix="s3prl_submit_") as tmp:
        proc = subprocess.run([sys.executable, str(script), *argv, "--output_dir", tmp], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=tmp)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
            return False, f"s3prl's submit.py failed on the card's directories: {last[:300]}"
        theirs = _members(Path(tmp) / "predict.zip")
    ours = _members(card_json.parent / "predict.zip")
    only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    differ = sorted(name for name in set(ours) & set(theirs) if ours[name] != theirs[name])
    if only_ours or only_theirs or differ:
        return False, (f"predict.zip differs from s3prl's submit.py: only ours {only_ours[:5]}, only theirs "
                       f"{only_theirs[:5]}, different bytes {differ[:5]}")
    return True, (f"s3prl's submit.py ({len(expdirs)} arguments) packs the same {len(ours)} files, byte for byte")
