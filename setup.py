"""The build step pyproject.toml cannot say: ship the SUPERB configs and the ten-task script in the package.

`downstream_configs/` and `scripts/run_superb.sh` stay at the top of the
repository (their home, edited there); a wheel or a non-editable install gets a
copy in `pruned_upstream/package_data/`, with the same relative layout, so that
`superb` finds its default configs and `superb-all` its script without the
checkout (pruned_upstream/shipped.py). Editable installs read the checkout.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"downstream_configs": ("*.yaml", "README.md"), "scripts": ("run_superb.sh", "README.md")}


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, patterns in SHIPPED.items():
            dest = Path(self.build_lib) / "pruned_upstream" / "package_data" / folder
            dest.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for path in sorted((ROOT / folder).glob(pattern)):
                    shutil.copy2(path, dest / path.name)


setup(cmdclass={"build_py": BuildPyWithData})
