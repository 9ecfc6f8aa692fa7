"""Files the package ships beside its code: the SUPERB task configs and the ten-task script.

    shipped_dir("downstream_configs")   # the ten s3prl configs
    shipped_dir("scripts")              # run_superb.sh

In a wheel (or any non-editable install) they are package data under
`pruned_upstream/package_data/` (setup.py copies them there at build time); in a
source checkout (an editable install) they are read where they live, at the top
of the repository. Both keep the same relative layout, so the script finds the
configs as `../downstream_configs` either way.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = ("downstream_configs", "scripts")


def shipped_dir(name: str) -> Path:
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped folder {name!r}; known: {', '.join(SHIPPED)}")
    packaged = Path(str(resources.files("pruned_upstream"))) / "package_data" / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[1] / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"{name}/ is neither in the installed package ({packaged}) nor in a source checkout "
                            f"({checkout}): reinstall pruned-upstream")
