"""s3prl's data caches inside its package directory, kept apart per data set.

Among the ten SUPERB downstreams of s3prl 0.4.18 (commit ec8064b5), two write
a cache into s3prl's own package directory, keyed by nothing but a split or
corpus name, and read it back on every later run whatever the data set
(docs/tasks/caches.md has the full survey):

* SID, ``s3prl/downstream/voxceleb1/dataset.py``: ``.cache/{train,dev,test}.pkl``,
  a pickled list of absolute wav paths (``glob(<file_path>/*/wav/<line>)`` for
  each line of ``meta_data`` whose split is the mode's);
* ASV, ``s3prl/downstream/sv_voxceleb1/dataset.py``:
  ``.wav_lengths/Voxceleb1_length.pt``, ``torch.save([tags, lengths])``: the
  last three path parts of every audio file under ``<file_path>/dev/wav``
  and its length after sox's silence trimming (rebuilt as paths under the
  current root when read).

A second data set therefore silently trains and tests on the first one's file
list (SID) or crashes / drops files on the first one's lengths (ASV).

Handling, without touching s3prl's files: before a run, :func:`isolate_caches`
computes a fingerprint of what the cache depends on (data root, the split
list's bytes, the audio tree's names, sizes and times, s3prl's dataset.py) and
compares it with the stamp we keep beside the cache
(``<cache dir>/pruned_upstream/live.json``). On a match nothing happens (the
cache is reused). Otherwise the cache files are moved into
``<cache dir>/pruned_upstream/stash/<their fingerprint>/`` (or, with no stamp,
``unstamped/<time>/``: never reused), a stash of the new fingerprint is moved
back if one exists, and the stamp is rewritten. s3prl then finds either the
cache of this very data set or none, and builds one. Every decision is
appended to ``<expdir>/s3prl_caches.json``.

Limits: two runs of one downstream at the same time on different data sets
through one s3prl installation are not protected (the swap is locked, the run
is not); a cache written by a run that bypassed this function (plain
``run_downstream.py``) after a stamp was written is detected only where its
content names its data (SID's absolute paths).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

OURS = "pruned_upstream"  # our sub-directory inside a cache directory
LOG = "s3prl_caches.json"  # in the expdir
KEEP_STASHED = 5  # stashed (and quarantined) caches kept per cache directory, newest first


@dataclass(frozen=True)
class CacheSpec:
    """One on-disk cache of an s3prl downstream, inside s3prl's package directory."""

    downstream: str  # s3prl's -d
    directory: str  # relative to s3prl's package directory
    files: tuple[str, ...]  # the names s3prl writes there
    writer: str  # s3prl's file that reads and writes it
    stores: str
    describe: Callable[[dict, Path], dict]  # (effective config, s3prl root) -> what the cache depends on
    verify: Callable[[Path, dict], bool]  # (cache file, describe()) -> is its content plausible for it


@dataclass(frozen=True)
class CacheAction:
    """What :func:`isolate_caches` did with one cache directory."""

    directory: str
    fingerprint: str
    # "reused" (stamp matches, files present), "fresh" (s3prl will build them), "restored" (from
    # our stash), prefixed "stashed+" (another data set's files set aside) or "quarantined+"
    # (files of unknown data set moved to unstamped/, never reused)
    action: str
    moved_aside: tuple[str, ...]
    restored: tuple[str, ...]
    data: dict


# ------------------------------------------------------------ fingerprints
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
    """voxceleb1's pickles: absolute paths found from ``file_path`` and the ``meta_data`` lines."""
    datarc = _datarc(config)
    meta = config_path(datarc.get("meta_data", ""), s3prl_root)
    return {
        "s3prl_root": str(s3prl_root),  # relative paths in the pickle are relative to it
        "file_path": config_path(datarc.get("file_path", ""), s3prl_root),
        "meta_data": meta,
        "meta_data_sha256": file_sha256(meta),
        "s3prl_dataset_sha256": file_sha256(s3prl_root / "downstream/voxceleb1/dataset.py"),
    }


def describe_asv(config: dict, s3prl_root: Path) -> dict:
    """sv_voxceleb1's lengths: every file under ``<file_path>/dev/wav`` and its content."""
    train_root = os.path.join(config_path(_datarc(config).get("file_path", ""), s3prl_root), "dev", "wav")
    return {
        "train_root": train_root,
        "tree": tree_signature(train_root) if os.path.isdir(train_root) else None,
        "s3prl_dataset_sha256": file_sha256(s3prl_root / "downstream/sv_voxceleb1/dataset.py"),
    }


def verify_sid(cache_file: Path, data: dict) -> bool:
    """Every path in the pickle lies under this data set's ``file_path``."""
    try:
        with open(cache_file, "rb") as f:
            paths = pickle.load(f)
    except Exception:  # truncated or foreign: not ours to trust
        return False
    root = data["file_path"].rstrip(os.sep) + os.sep
    return isinstance(paths, list) and all(
        isinstance(p, str) and config_path(p, Path(data["s3prl_root"])).startswith(root) for p in paths
    )


def verify_asv(cache_file: Path, data: dict) -> bool:
    """The cached tags are exactly the files now under ``dev/wav`` (lengths cannot be checked cheaply)."""
    import torch

    try:
        tags, lengths = torch.load(str(cache_file))
    except Exception:
        return False
    root = data["train_root"]
    return len(tags) == len(lengths) and all(os.path.isfile(os.path.join(root, *tag)) for tag in tags)


CACHES = (
    CacheSpec(
        "voxceleb1", "downstream/voxceleb1/.cache", ("train.pkl", "dev.pkl", "test.pkl"),
        "s3prl/downstream/voxceleb1/dataset.py (SpeakerClassifiDataset.__init__, CACHE_PATH)",
        "pickled list of absolute wav paths of one split", describe_sid, verify_sid,
    ),
    CacheSpec(
        "sv_voxceleb1", "downstream/sv_voxceleb1/.wav_lengths", ("Voxceleb1_length.pt",),
        "s3prl/downstream/sv_voxceleb1/dataset.py (SpeakerVerifi_train.__init__)",
        "torch.save([wav_tags, wav_lengths]): (speaker, video, file) of every audio file under "
        "<file_path>/dev/wav and its length in samples after sox silence trimming",
        describe_asv, verify_asv,
    ),
)


def fingerprint(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------ the swap
def downstream_name(task_or_downstream: str) -> str:
    """s3prl's ``-d`` for a task key (``SID``) or a downstream name (``voxceleb1``)."""
    from pruned_upstream.s3prl_plugin.tasks import TASKS

    by_key = {key.upper(): spec.downstream for key, spec in TASKS.items()}
    return by_key.get(task_or_downstream.upper(), task_or_downstream)


def caches_of(task_or_downstream: str) -> tuple[CacheSpec, ...]:
    name = downstream_name(task_or_downstream)
    return tuple(spec for spec in CACHES if spec.downstream == name)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _move(names: list[str], source: Path, target: Path) -> tuple[str, ...]:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(source / name, target / name)
    return tuple(names)


def _prune_stash(stash: Path, keep: int = KEEP_STASHED) -> None:
    entries = sorted((p for p in stash.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _quarantine(names: list[str], cache_dir: Path, ours: Path) -> tuple[str, ...]:
    """Files of an unknown data set: moved to ``unstamped/<time>/``, never reused."""
    return _move(names, cache_dir, ours / "unstamped" / time.strftime("%Y%m%dT%H%M%S"))


def _keep_live(spec: CacheSpec, cache_dir: Path, ours: Path, present: list[str], data: dict, fp: str) -> CacheAction:
    """The stamp is this data set's: reuse its files, unless their content names other data."""
    doubtful = [n for n in present if not spec.verify(cache_dir / n, data)]
    aside = _quarantine(doubtful, cache_dir, ours) if doubtful else ()
    action = ("quarantined+" if doubtful else "") + ("reused" if len(doubtful) < len(present) else "fresh")
    return CacheAction(spec.directory, fp, action, aside, (), data)


def _set_aside(cache_dir: Path, ours: Path, present: list[str], live: dict) -> tuple[tuple[str, ...], str]:
    """Another data set's files to ``stash/<its fingerprint>/``, unstamped ones to quarantine."""
    if not present:
        return (), ""
    if not live.get("fingerprint"):  # written before we managed this directory
        return _quarantine(present, cache_dir, ours), "quarantined+"
    target = ours / "stash" / live["fingerprint"]
    aside = _move(present, cache_dir, target)
    (target / "stamp.json").write_text(json.dumps(live, indent=1))
    return aside, "stashed+"


def _restore(spec: CacheSpec, cache_dir: Path, stashed: Path, data: dict) -> tuple[str, ...]:
    """This data set's stashed files back into s3prl's cache directory (those that verify)."""
    if not stashed.is_dir():
        return ()
    names = [n for n in spec.files if (stashed / n).is_file() and spec.verify(stashed / n, data)]
    restored = _move(names, stashed, cache_dir)
    shutil.rmtree(stashed, ignore_errors=True)
    return restored


def _isolate_one(spec: CacheSpec, s3prl_root: Path, config: dict, expdir: str) -> CacheAction:
    cache_dir = s3prl_root / spec.directory
    ours = cache_dir / OURS
    data = spec.describe(config, s3prl_root)
    fp = fingerprint(data)
    with _locked(ours):
        live = _read_json(ours / "live.json") or {}
        present = [n for n in spec.files if (cache_dir / n).is_file()]
        if live.get("fingerprint") == fp:
            return _keep_live(spec, cache_dir, ours, present, data, fp)
        aside, prefix = _set_aside(cache_dir, ours, present, live)
        restored = _restore(spec, cache_dir, ours / "stash" / fp, data)
        stamp = {"fingerprint": fp, "data": data, "since": time.strftime("%Y-%m-%d %H:%M:%S"), "expdir": expdir}
        (ours / "live.json").write_text(json.dumps(stamp, indent=1))
        for kept in (ours / "stash", ours / "unstamped"):
            if kept.is_dir():
                _prune_stash(kept)
    return CacheAction(spec.directory, fp, prefix + ("restored" if restored else "fresh"), aside, restored, data)


def isolate_caches(task_or_downstream: str, s3prl_root: str | Path, expdir: str | Path | None,
                   config: dict) -> list[CacheAction]:
    """Make s3prl's package-directory caches of this downstream belong to this run's data.

    ``task_or_downstream``: our task key (``SID``) or s3prl's ``-d`` name
    (``voxceleb1``); ``s3prl_root``: s3prl's package directory (relative
    config paths are resolved against it, as s3prl opens them from there);
    ``config``: the effective config of the run (after ``-e`` and ``-o``).
    Downstreams without such a cache return ``[]`` at once. The decisions
    are printed and appended to ``<expdir>/s3prl_caches.json``.
    """
    specs = caches_of(task_or_downstream)
    actions = [_isolate_one(spec, Path(s3prl_root), config, str(expdir)) for spec in specs]
    for a in actions:
        print(f"[pruned-upstream] s3prl cache {a.directory}: {a.action} (data fingerprint {a.fingerprint})")
    if actions and expdir is not None:
        log = Path(expdir) / LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        entries = (_read_json(log) or {}).get("runs", []) if log.is_file() else []
        entries.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "actions": [asdict(a) for a in actions]})
        log.write_text(json.dumps({"runs": entries}, indent=1))
    return actions
