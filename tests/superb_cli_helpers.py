"""Helpers for the SID, ASV, ER and cache tests: run ``pruned-upstream superb`` in-process.

Every run goes through ``pruned_upstream.cli.main(["superb", ...])``, i.e.
s3prl 0.4.18's own ``run_downstream.py`` with our upstream registered.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pruned_upstream import cli
from pruned_upstream.s3prl_plugin import caches, preflight

UPSTREAM = "pruned_wavlm_local"


def runner_overrides(steps: int, *, eval_step: int | None = None, save_step: int | None = None,
                     log_step: int | None = None, eval_dev_only: bool = False) -> list[str]:
    """s3prl runner fields for a run of ``steps`` steps, no gradient accumulation.

    ``eval_dev_only``: evaluate only dev during training (the test split is
    scored by the ``-m evaluate`` run anyway), which saves one test pass.
    """
    items = [
        f"config.runner.total_steps={steps}",
        f"config.runner.eval_step={eval_step or steps}",
        f"config.runner.save_step={save_step or steps}",
        f"config.runner.log_step={log_step or steps}",
        "config.runner.gradient_accumulate_steps=1",
    ]
    return items + (["config.runner.eval_dataloaders=['dev']"] if eval_dev_only else [])


def datarc(**fields) -> list[str]:
    return [f"config.downstream_expert.datarc.{key}={value}" for key, value in fields.items()]


def join(items: list[str]) -> str:
    return ",,".join(items)


def superb(argv: list[str], times: dict | None = None, key: str | None = None) -> int:
    """``pruned-upstream superb ARGV`` in this process; its wall time goes to ``times[key]``."""
    start = time.perf_counter()
    code = cli.main(["superb", *[str(a) for a in argv]])
    if times is not None and key is not None:
        times[key] = time.perf_counter() - start
    return code


def train_argv(downstream: str, ckpt: Path, expdir: Path, override: str) -> list[str]:
    return ["-m", "train", "-u", UPSTREAM, "-k", ckpt, "-d", downstream, "-p", expdir, "-o", override]


def cache_stamp(task: str, expdir: Path) -> dict | None:
    """What the runner recorded about ``task``'s s3prl cache in ``expdir`` (caches.py: data and action)."""
    return caches.read_stamp(expdir, task)


def log_lines(path: Path, prefix: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith(prefix)]


def s3prl_source_root(marker: str) -> Path:
    """s3prl's installed package directory, which must be a source tree holding ``marker``.

    `make test` installs the tree (S3PRL_SRC or a clone) and refuses to run without it, so a
    missing file here is a broken install: the test fails with the remedy, it never skips.
    """
    root = preflight.installed_s3prl_root()
    if root is None or not (root / marker).exists():
        pytest.fail(f"s3prl's source tree is not installed ({marker} missing under {root}): "
                    "set S3PRL_SRC and run `make install` (docs/environment.md)")
    return root
