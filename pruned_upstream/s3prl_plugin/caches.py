"""s3prl's data caches, moved into the experiment directory in process: nothing is written under s3prl.

Among the ten SUPERB downstreams of s3prl 0.4.18 (commit ec8064b5), two keep
a cache beside their own source, keyed by nothing but a split or corpus name
(docs/tasks/caches.md has the survey):

* SID, ``s3prl/downstream/voxceleb1/dataset.py``: ``CACHE_PATH`` (a module
  constant, ``os.path.join(os.path.dirname(__file__), '.cache/')``) holds
  ``{train,dev,test}.pkl``, pickled lists of absolute wav paths;
* ASV, ``s3prl/downstream/sv_voxceleb1/dataset.py``:
  ``Path(os.path.dirname(__file__)) / '.wav_lengths'``, evaluated in
  ``SpeakerVerifi_train.__init__`` from the module's ``__file__`` global,
  holds ``Voxceleb1_length.pt`` (``torch.save([tags, lengths])``).

Written there, they make s3prl's package directory part of every run: a second
data set silently reuses the first one's lists, a read-only installation cannot
run SID or ASV, and a leftover ``.cache`` in a PyPI install turns ``s3prl`` into
a namespace package once the package is replaced (installer: scripts/install_s3prl.py).

:func:`redirect_caches` points both at ``<experiment>/s3prl_cache/<downstream>/``
for the duration of one run, in this process, without changing s3prl's files:
it sets ``CACHE_PATH`` of ``voxceleb1.dataset`` and ``__file__`` of
``sv_voxceleb1.dataset`` (read at call time by ``os.path.dirname(__file__)``)
and restores both afterwards. The experiment is the run's expdir, or for
``-e CKPT`` the checkpoint's directory (ASV's per-checkpoint evaluations,
``-o args.expdir=.../states-N``, then share the training run's lengths).

What the cache was built from (:func:`describe_sid`, :func:`describe_asv`) is
kept beside it in ``data.json``; a run of the same experiment on other data
(``-o`` of another root) deletes the cache first, so s3prl rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = "s3prl_cache"  # inside the experiment directory
STAMP = "data.json"


@dataclass(frozen=True)
class CacheSpec:
    """One cache s3prl's dataset code keeps beside its own source, and how we move it."""

    downstream: str  # s3prl's -d
    module: str  # the dataset module whose global decides the location
    attribute: str  # that global: set for the run, restored after it
    package_path: str  # where s3prl would write, relative to its package directory
    files: tuple[str, ...]  # what s3prl writes there
    writer: str  # s3prl's file that reads and writes it
    stores: str
    describe: Callable[[dict, Path], dict]  # (effective config, s3prl root) -> what the cache depends on

    def value_for(self, directory: Path) -> str:
        """The attribute's value that makes s3prl use ``directory``."""
        if self.attribute == "CACHE_PATH":
            return str(directory) + os.sep  # s3prl's own value ends with '/'
        return str(directory / "dataset.py")  # __file__: only its dirname is used


@dataclass(frozen=True)
class CacheAction:
    """What :func:`redirect_caches` did for one cache."""

    downstream: str
    directory: str  # where s3prl reads and writes it in this run
    action: str  # "fresh" (nothing cached yet), "reused" (same data), "rebuilt" (other data: deleted)
    data: dict


# ------------------------------------------------------------ what a cache depends on
def config_path(value, s3prl_root: Path) -> str:
    """A config path as s3prl opens it: relative paths are relative to its package directory."""
    return os.path.abspath(os.path.join(s3prl_root, os.path.expanduser(str(value))))


def file_sha256(path: str | Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def tree_signature(directory: str | Path) -> dict:
    """Names, sizes and modification times of every file under ``directory``, hashed."""
    digest, count = hashlib.sha256(), 0
    for top, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            st = os.stat(path)
            digest.update(f"{os.path.relpath(path, directory)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
    return {"files": count, "sha256": digest.hexdigest()}


def _datarc(config: dict) -> dict:
    return (config.get("downstream_expert") or {}).get("datarc") or {}


def describe_sid(config: dict, s3prl_root: Path) -> dict:
    """voxceleb1's lists: the data root, the split file (path and bytes), s3prl's dataset.py."""
    datarc = _datarc(config)
    meta = config_path(datarc.get("meta_data", ""), s3prl_root)
    return {
        "file_path": config_path(datarc.get("file_path", ""), s3prl_root),
        "meta_data": meta,
        "meta_data_sha256": file_sha256(meta),
        "s3prl_dataset_sha256": file_sha256(s3prl_root / "downstream/voxceleb1/dataset.py"),
    }


def describe_asv(config: dict, s3prl_root: Path) -> dict:
    """sv_voxceleb1's lengths: every file under ``<file_path>/dev/wav`` (names, sizes, times), s3prl's dataset.py."""
    train_root = os.path.join(config_path(_datarc(config).get("file_path", ""), s3prl_root), "dev", "wav")
    return {
        "train_root": train_root,
        "tree": tree_signature(train_root) if os.path.isdir(train_root) else None,
        "s3prl_dataset_sha256": file_sha256(s3prl_root / "downstream/sv_voxceleb1/dataset.py"),
    }


CACHES = (
    CacheSpec(
        "voxceleb1", "s3prl.downstream.voxceleb1.dataset", "CACHE_PATH", "downstream/voxceleb1/.cache",
        ("train.pkl", "dev.pkl", "test.pkl"),
        "s3prl/downstream/voxceleb1/dataset.py (CACHE_PATH, SpeakerClassifiDataset.__init__)",
        "pickled list of absolute wav paths of one split", describe_sid,
    ),
    CacheSpec(
        "sv_voxceleb1", "s3prl.downstream.sv_voxceleb1.dataset", "__file__", "downstream/sv_voxceleb1/.wav_lengths",
        (".wav_lengths/Voxceleb1_length.pt",),
        "s3prl/downstream/sv_voxceleb1/dataset.py (SpeakerVerifi_train.__init__, dirname(__file__))",
        "torch.save([wav_tags, wav_lengths]): (speaker, video, file) of every audio file under "
        "<file_path>/dev/wav and its length in samples after sox silence trimming",
        describe_asv,
    ),
)


def downstream_name(task_or_downstream: str) -> str:
    """s3prl's ``-d`` for a task key (``SID``) or a downstream name (``voxceleb1``)."""
    from pruned_upstream.s3prl_plugin.tasks import TASKS

    by_key = {key.upper(): spec.downstream for key, spec in TASKS.items()}
    return by_key.get(task_or_downstream.upper(), task_or_downstream)


def caches_of(task_or_downstream: str) -> tuple[CacheSpec, ...]:
    name = downstream_name(task_or_downstream)
    return tuple(spec for spec in CACHES if spec.downstream == name)


def cache_dir(experiment: str | Path, spec: CacheSpec) -> Path:
    return Path(experiment) / CACHE_DIR / spec.downstream


def experiment_of(args) -> Path:
    """Where a run's caches live: the checkpoint's directory for ``-e`` (s3prl sets ``init_ckpt``), else the expdir."""
    if getattr(args, "past_exp", None) and getattr(args, "init_ckpt", None):
        return Path(args.init_ckpt).resolve().parent
    return Path(args.expdir).resolve()


def read_stamp(experiment: str | Path, task_or_downstream: str) -> dict | None:
    """``data.json`` of the experiment's cache for this downstream (what it was built from, the last action)."""
    (spec,) = caches_of(task_or_downstream)
    try:
        return json.loads((cache_dir(experiment, spec) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _prepare(spec: CacheSpec, directory: Path, data: dict) -> str:
    """Make ``directory`` hold this data's cache or none: 'fresh', 'reused' or 'rebuilt'."""
    stamp = directory / STAMP
    previous = None
    if stamp.is_file():
        try:
            previous = json.loads(stamp.read_text()).get("data")
        except (OSError, ValueError):
            previous = "unreadable"
    present = directory.is_dir() and any(p.name != STAMP for p in directory.iterdir())
    if present and previous != data:  # other data, or not ours to trust: s3prl rebuilds it
        shutil.rmtree(directory)
        action = "rebuilt"
    else:
        action = "reused" if present else "fresh"
    directory.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"downstream": spec.downstream, "action": action, "data": data}, indent=1))
    return action


@contextlib.contextmanager
def redirect_caches(task_or_downstream: str, experiment: str | Path, config: dict,
                    s3prl_root: str | Path) -> Iterator[list[CacheAction]]:
    """For the duration of the block, s3prl's caches of this downstream live under ``experiment``.

    ``config``: the run's effective config (after ``-e`` and ``-o``); relative
    paths in it are resolved against ``s3prl_root`` as s3prl opens them.
    Downstreams without such a cache yield ``[]`` and change nothing.
    """
    actions, saved = [], []
    try:
        for spec in caches_of(task_or_downstream):
            directory = cache_dir(experiment, spec)
            data = spec.describe(config, Path(s3prl_root))
            action = _prepare(spec, directory, data)
            module = importlib.import_module(spec.module)
            saved.append((module, spec.attribute, getattr(module, spec.attribute)))
            setattr(module, spec.attribute, spec.value_for(directory))
            actions.append(CacheAction(spec.downstream, str(directory), action, data))
            print(f"[pruned-upstream] s3prl's {spec.downstream} cache: {directory} ({action})")
        yield actions
    finally:
        for module, attribute, value in reversed(saved):
            setattr(module, attribute, value)
