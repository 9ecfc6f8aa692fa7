"""All ten SUPERB tasks' small data under one root, and what `scripts/run_superb.sh` needs to run them.

    bundle = make_small_superb("data/small_superb", seed=0, steps=4)
    env = run_env(bundle, {"DSCORE_ROOT": "/x/dscore-19dab77.tar.gz"})
    subprocess.run(["scripts/run_superb.sh", CKPT, OUT], env=env, check=True)

``bundle.env`` holds exactly the data variables of the script (its
``DATA_VARS`` less ``DSCORE_ROOT``, which names a third-party tool, not data:
the caller brings it); ``bundle.overrides`` maps each task to the s3prl ``-o``
string (``key=value,,key=value``) that small data needs, for
``SUPERB_OVERRIDE_<TASK>``: the small data's own lexicon (PR), split list
(SID), trial list (ASV) and meta data (ER), no loader workers, small batches
and heads, and ``steps`` training steps with one dev pass and one checkpoint
at the end. The corpora are built by the per-corpus modules beside this one
(docs/superb_small_data.md); a root holding a complete bundle of the same
version, seed and sizes (its stamp file is written last) is reused as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pruned_upstream.s3prl_plugin.override_quoting import s3prl_literal

VERSION = 2  # bump when a builder's output changes: older bundles are rebuilt (2: librispeech lm.arpa)
STAMP = "small_superb.json"
TASKS = ("PR", "KS", "IC", "SID", "ER", "ASR", "QbE", "SF", "ASV", "SD")  # run_superb.sh's ALL_TASKS
SIZES = {
    "librispeech": {"train-clean-100": 3, "dev-clean": 2, "test-clean": 2},  # utterances per speaker
    "speech_commands": {"voices": 4, "unknown_words": 3},  # 2 train speakers, 1 dev, 1 test
    "voxceleb1": {"n_dev": 4, "n_test": 2, "train_videos": 1, "per_video": 2},
    "iemocap": {"per_emotion": 1},
    "snips": {"train": 7, "valid": 3, "test": 3},  # sentences per split, each said by every speaker
    "libri2mix": {"train": 8, "dev": 2, "test": 2},  # recordings
}
SUBDIRS = ("librispeech", "speech_commands", "fluent_commands", "VoxCeleb1", "IEMOCAP_full_release",
           "quesst14", "snips", "libri2mix")
# What makes small runs fast on a few CPU cores and changes no data (run_env; `extra` may undo it):
# s3prl's ASV computes its trimmed lengths with joblib.Parallel(n_jobs=12) (docs/tasks/asv.md), and
# JOBLIB_MULTIPROCESSING=0 makes it sequential; on tiny tensors one torch thread beats two (SD's LSTM:
# 40 steps took 118 s with two threads, 3 s with one, here; docs/superb_small_data.md).
FAST_ENV = {"JOBLIB_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Paths:
    """Where the bundle's corpora and the files the overrides name lie under its root."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        r = self.root
        return {
            "LIBRISPEECH_ROOT": str(r / "librispeech" / "LibriSpeech"),
            "LIBRISPEECH_BUCKET_DIR": str(r / "librispeech" / "len_for_bucket"),
            "SPEECH_COMMANDS_ROOT": str(r / "speech_commands" / "speech_commands_v0.01"),
            "SPEECH_COMMANDS_TEST_ROOT": str(r / "speech_commands" / "speech_commands_test_set_v0.01"),
            "FLUENT_COMMANDS_ROOT": str(r / "fluent_commands" / "fluent_speech_commands_dataset"),
            "VOXCELEB1_ROOT": str(r / "VoxCeleb1"),
            "IEMOCAP_ROOT": str(r / "IEMOCAP_full_release"),
            "QUESST14_ROOT": str(r / "quesst14" / "quesst14Database"),
            "SNIPS_ROOT": str(r / "snips" / "SNIPS"),
            "LIBRI2MIX_SD_DATA": str(r / "libri2mix" / "data"),
        }

    @property
    def lexicon(self) -> Path:
        return self.root / "librispeech" / "lexicon.txt"

    @property
    def iden_split(self) -> Path:
        return self.root / "VoxCeleb1" / "iden_split.txt"

    @property
    def trials(self) -> Path:
        return self.root / "VoxCeleb1" / "veri_test2.txt"

    @property
    def er_meta_data(self) -> Path:
        return self.root / "IEMOCAP_full_release" / "meta_data"


@dataclass(frozen=True)
class SmallSuperb:
    """A built bundle: ``env`` (data variables) and ``overrides`` (task -> s3prl ``-o`` string)."""

    root: Path
    seed: int
    steps: int
    env: dict[str, str]
    overrides: dict[str, str]
    reused: bool  # True: an existing complete bundle was found and nothing was written


def runner_items(steps: int, *, dev_only: bool = False) -> list[str]:
    """``steps`` training steps, one dev pass, one checkpoint and one log line at the end, no accumulation."""
    items = [f"config.runner.{key}={steps}" for key in ("total_steps", "eval_step", "save_step", "log_step")]
    items.append("config.runner.gradient_accumulate_steps=1")
    return items + (["config.runner.eval_dataloaders=['dev']"] if dev_only else [])  # test: the -m evaluate pass


def _fields(prefix: str, **values) -> list[str]:
    return [f"config.downstream_expert.{prefix}.{key}={value}" for key, value in values.items()]


def task_overrides(paths: Paths, steps: int) -> dict[str, str]:
    """Task -> the ``-o`` string of its runs on the bundle (train, test, ASV's evaluations, QbE's DTW)."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    def q(path) -> str:  # s3prl eval()s each value: our one quoting of a path for -o (override_quoting.py)
        return s3prl_literal(str(path))

    small_cls = _fields("datarc", num_workers=0) + _fields("modelrc", projector_dim=8)
    items = {
        # ctc pops corpus.num_workers after the first loader: the evaluate pass needs it again (docs/tasks/pr.md)
        "PR": runner_items(steps) + _fields("corpus", lexicon=f"[{q(paths.lexicon)}]", batch_size=4, num_workers=0)
        + _fields("model", project_dim=16),
        "KS": runner_items(steps, dev_only=True) + small_cls + _fields("datarc", batch_size=4),
        "IC": runner_items(steps, dev_only=True) + small_cls + _fields("datarc", train_batch_size=4, eval_batch_size=4),
        "SID": runner_items(steps, dev_only=True) + small_cls
        + _fields("datarc", meta_data=q(paths.iden_split), train_batch_size=4),
        "ER": runner_items(steps, dev_only=True) + small_cls
        + _fields("datarc", meta_data=q(paths.er_meta_data), train_batch_size=4, eval_batch_size=4),
        "ASR": runner_items(steps) + _fields("datarc", batch_size=4, num_workers=0)
        + _fields("modelrc", project_dim=16) + ["config.downstream_expert.modelrc.RNNs.dim=[16,16]"],
        "QbE": _fields("datarc", num_workers=0) + ["config.downstream_expert.max_workers=2"],
        "SF": runner_items(steps) + _fields("corpus", batch_size=4, num_workers=0)
        + _fields("model", project_dim=16) + ["config.downstream_expert.model.RNNs.dim=[16,16]"],
        # one checkpoint (save_step = steps): run_superb.sh evaluates every states-N.ckpt
        "ASV": runner_items(steps) + _fields("datarc", test_meta_data=q(paths.trials), num_workers=0,
                                             train_batch_size=4),
        "SD": runner_items(steps) + _fields("loaderrc", num_workers=0, train_batchsize=4)
        + _fields("modelrc", hidden_size=32),
    }
    return {task: ",,".join(items[task]) for task in TASKS}


def _check_root(root: Path) -> None:
    text = str(root)
    if "Session" in text:  # s3prl's IEMOCAP_preprocess.py cuts paths at the first "Session"
        raise ValueError(f"{root}: the bundle root must not contain 'Session' (docs/tasks/er.md)")
    bad = [c for c in ("'", "=", ",", " ", "\t", "\n") if c in text]
    if bad:  # s3prl's -o splits on ',,' and '=', and run_superb.sh refuses whitespace in paths
        raise ValueError(f"{root}: the bundle root must not contain {bad!r} (it goes into s3prl's -o strings)")


def _builders(root: Path, seed: int) -> list:
    """One callable per corpus; each writes only under its own entry of SUBDIRS."""
    from . import fluent_commands, iemocap, libri2mix, librispeech, quesst14, snips, speech_commands, voxceleb1

    def er() -> None:
        iemocap.make_iemocap(root / "IEMOCAP_full_release", seed=seed, **SIZES["iemocap"])
        iemocap.run_s3prl_preprocess(root / "IEMOCAP_full_release")  # s3prl's own script writes meta_data/

    ks = SIZES["speech_commands"]
    return [
        lambda: librispeech.build_librispeech(root / "librispeech", per_reader=SIZES["librispeech"], seed=seed),
        lambda: speech_commands.make_speech_commands(root / "speech_commands", speech_commands.VOICES[:ks["voices"]],
                                                     n_unknown=ks["unknown_words"], seed=seed),
        lambda: fluent_commands.make_fluent_commands(root / "fluent_commands", seed=seed),
        lambda: voxceleb1.make_voxceleb1(root / "VoxCeleb1", seed=seed, **SIZES["voxceleb1"]),
        er,
        lambda: quesst14.make_quesst14(root / "quesst14", seed=seed),
        lambda: snips.build_snips(root / "snips", per_split=SIZES["snips"], seed=seed),
        lambda: libri2mix.make_libri2mix_sd(root / "libri2mix", sizes=SIZES["libri2mix"], seed=seed),
    ]


def stamp_content(seed: int) -> dict:
    return {"version": VERSION, "seed": seed, "sizes": SIZES}


def is_complete(root: str | Path, seed: int) -> bool:
    """Whether ``root`` holds a finished bundle of this version, ``seed`` and sizes."""
    root = Path(root).resolve()
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    paths = Paths(root)
    files = (paths.lexicon, paths.iden_split, paths.trials, paths.er_meta_data)
    return stamp == stamp_content(seed) and all(Path(p).exists() for p in (*paths.env.values(), *files))


def make_small_superb(root: str | Path, seed: int = 0, steps: int = 4, *, rebuild: bool = False,
                      workers: int = 2) -> SmallSuperb:
    """Build (or reuse) the ten tasks' small data under ``root``; deterministic given ``seed``.

    ``steps``: training steps per task in the overrides (data does not depend
    on it). ``rebuild``: build even when a complete bundle is there.
    ``workers``: corpora built at the same time (espeak-ng runs in subprocesses).
    """
    root = Path(root).resolve()
    _check_root(root)
    paths = Paths(root)
    overrides = task_overrides(paths, steps)  # checks steps before anything is written
    reused = not rebuild and is_complete(root, seed)
    if not reused:
        root.mkdir(parents=True, exist_ok=True)
        (root / STAMP).unlink(missing_ok=True)
        for sub in SUBDIRS:  # a partial or older bundle: only our own folders are removed
            shutil.rmtree(root / sub, ignore_errors=True)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(build) for build in _builders(root, seed)]:
                future.result()  # re-raises a builder's error
        (root / STAMP).write_text(json.dumps(stamp_content(seed), indent=1) + "\n")
    return SmallSuperb(root, seed, steps, paths.env, overrides, reused)


def run_env(bundle: SmallSuperb, extra: dict[str, str] | None = None,
            base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``scripts/run_superb.sh`` on the bundle.

    ``base`` (default ``os.environ``), then FAST_ENV, the bundle's data
    variables and ``SUPERB_OVERRIDE_<TASK>`` for each task, then ``extra``
    (e.g. ``DSCORE_ROOT``, ``PRUNED_UPSTREAM``, ``PYTHON``, ``QBE_LAYERS``).
    """
    env = dict(os.environ if base is None else base)
    env.update(FAST_ENV)
    env.update(bundle.env)
    env.update({f"SUPERB_OVERRIDE_{task}": override for task, override in bundle.overrides.items()})
    env.update(extra or {})
    return env
