"""The leaderboard's `predict.zip` from a `superb-all` RESULTS_DIR, as s3prl's submit.py packs it (torch-free).

s3prl 0.4.18's `s3prl/submit/submit.py` takes one experiment directory per argument
(`--pr --sid ... --sd`), copies one fixed file of each into `predict/<task>_public/`
and runs `zip -q -r predict.zip predict/`. `plan_submission` picks, per argument, the
directory the SUPERB protocol submits from RESULTS_DIR (docs/submission.md says why
each one); `write_predict_zip` writes the same members with the same bytes.

Nothing inside RESULTS_DIR is followed through a symbolic link, and every file
packed or read must be a regular file (a FIFO would block, a link could point
anywhere): either is refused (`Refused`), whatever `--allow-missing` says.
"""

from __future__ import annotations

import os
import stat
import time
import zipfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from pruned_upstream.errors import CheckpointError
from pruned_upstream.small_files import iter_lines, open_regular
from pruned_upstream.superb.expdirs import _best_dev_layer, read_expdir
from pruned_upstream.superb.s3prl_logs import read_asv_eer

# submit.py's arguments, in its order; ER counts only with all five folds, ASR is scored with and without the LM.
ARGS = ("pr", "sid", "ks", "ic", "er_fold1", "er_fold2", "er_fold3", "er_fold4", "er_fold5", "asr_no_lm",
        "asr_with_lm", "qbe", "sf", "sv", "sd")
# argument -> (directory under predict/, file submit.py reads from the expdir, its name in the zip)
FILES = {
    "pr": ("pr_public", "test-hyp.ark", "predict.ark"),
    "sid": ("sid_public", "test_predict.txt", "predict.txt"),
    "ks": ("ks_public", "test_predict.txt", "predict.txt"),
    "ic": ("ic_public", "test_predict.csv", "predict.csv"),
    **{f"er_fold{n}": (f"er_fold{n}_public", f"test_fold{n}_predict.txt", "predict.txt") for n in range(1, 6)},
    "asr_no_lm": ("asr_public", "test-clean-noLM-hyp.ark", "predict.ark"),
    "asr_with_lm": ("asr_lm_public", "test-clean-LM-hyp.ark", "predict.ark"),
    "qbe": ("qbe_public", "benchmark.stdlist.xml", "benchmark.stdlist.xml"),
    "sf": ("sf_public", "test-hyp.ark", "predict.ark"),
    "sv": ("sv_public", "test_predict.txt", "predict.txt"),
    "sd": ("sd_public", "scoring/predictions", "scoring/predictions"),
}
# argument -> (superb-all's expdir name, SUPERB task); qbe and sv are picked among several directories
EXPDIRS = {"pr": ("PR", "PR"), "sid": ("SID", "SID"), "ks": ("KS", "KS"), "ic": ("IC", "IC"),
           **{f"er_fold{n}": (f"ER_fold{n}", "ER") for n in range(1, 6)},
           "asr_no_lm": ("ASR", "ASR"), "asr_with_lm": ("ASR", "ASR"), "sf": ("SF", "SF"), "sd": ("SD", "SD")}
# Files the score's readers open in an expdir (superb/expdirs.py, s3prl_logs.py): none may be a link.
READ_NAMES = ("args_*.yaml", "config_*.yaml", "log.log", "stdout.log", "superb_result.json", "score_twv.log",
              "score_twv_ours.log", "frame_shift", "scoring", "result_th*_med*", "predictions", "states-*",
              "log.txt", "test_predict.txt")
MAX_FILE = 1 << 30  # bytes of one packed file (SD's largest .h5 is a few MB)
MAX_FILES = 100_000  # files under SD's scoring/predictions (Libri2Mix test: 3000)


class Refused(ValueError):
    """A link or a non-regular file where a prediction or a log is read: never packed, never skipped."""


@dataclass
class Entry:
    """One argument of submit.py: its directory and the (zip member, source file) pairs it adds."""
    arg: str
    expdir: Path
    members: list[tuple[str, Path]]


@dataclass
class Plan:
    root: Path
    entries: dict[str, Entry] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # argument -> why it is left out
    scored_expdirs: list[Path] = field(default_factory=list)  # what the card's metrics are read from


# ---------------------------------------------------------------- links and regular files

def _check_inside(root: Path, path: Path, want_dir: bool) -> bool:
    """Whether `path` (under `root`) exists; a link on the way, or a non-regular file, is Refused."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(mode):
            raise Refused(f"{current} is a symbolic link; refused (nothing inside RESULTS_DIR is followed "
                          "through a link)")
    if want_dir and not stat.S_ISDIR(mode):
        raise Refused(f"{path} is not a directory; refused")
    if not want_dir and not stat.S_ISREG(mode):
        raise Refused(f"{path} is not a regular file (a FIFO, a device, a directory); refused")
    return True


def _check_read_names(directory: Path) -> None:
    """No file the score's readers open in `directory` is a link (open_regular would follow it)."""
    with os.scandir(directory) as entries:
        for item in entries:
            if item.is_symlink() and any(fnmatch(item.name, pattern) for pattern in READ_NAMES):
                raise Refused(f"{directory / item.name} is a symbolic link; refused (nothing inside RESULTS_DIR "
                              "is followed through a link)")


def _expdir(root: Path, name: str) -> Path | None:
    path = root / name
    if not _check_inside(root, path, want_dir=True):
        return None
    _check_read_names(path)
    for sub in ("scoring",):
        if _check_inside(root, path / sub, want_dir=True):
            _check_read_names(path / sub)
    for states in sorted(path.glob("states-*")):
        if states.is_dir() and not states.is_symlink():
            _check_read_names(states)
    return path


# ---------------------------------------------------------------- what the protocol submits

def _tested(expdir: Path, task: str):
    """The Experiment of an expdir whose test result the score reads; ValueError when it has none.

    KS/IC/SID/ER also evaluate test during training (their configs' eval_dataloaders) and overwrite
    test_predict.txt each time: only the `test at step 0` line of `-m evaluate` on the dev-best
    checkpoint (scripts/run_superb.sh test_best) says the file on disk is the dev-best one's."""
    try:
        run = read_expdir(expdir)
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    if run.task != task:
        raise ValueError(f"{expdir} holds a {run.task} run, not {task}")
    if task in ("KS", "IC", "SID", "ER") and not run.sources[task].endswith("superb_result.json") and not any(
            line.startswith("test at step 0: ") for line in iter_lines(expdir / "log.log")):
        raise ValueError(f"{expdir}: no `test at step 0` line in log.log: the dev-best checkpoint was never "
                         "tested (training's own test passes are not submitted)")
    return run


def _file_entry(root: Path, arg: str, expdir: Path) -> Entry:
    task_dir, source, member = FILES[arg]
    if not _check_inside(root, expdir / source, want_dir=False):
        raise ValueError(f"no {source} in {expdir}")
    return Entry(arg, expdir, [(f"predict/{task_dir}/{member}", expdir / source)])


def _sd_entry(root: Path, expdir: Path) -> Entry:
    predictions = expdir / "scoring" / "predictions"
    if not _check_inside(root, predictions, want_dir=True):
        raise ValueError(f"no scoring/predictions in {expdir} (the test pass writes it)")
    names = sorted(os.listdir(predictions))
    if not names or len(names) > MAX_FILES:
        raise ValueError(f"{predictions} holds {len(names)} files (expected 1 .. {MAX_FILES})")
    members = []
    for name in names:
        _check_inside(root, predictions / name, want_dir=False)  # a subdirectory is refused too
        members.append((f"predict/sd_public/scoring/predictions/{name}", predictions / name))
    if _check_inside(root, expdir / "frame_shift", want_dir=False):  # submit.py copies it when present
        members.append(("predict/sd_public/frame_shift", expdir / "frame_shift"))
    return Entry("sd", expdir, members)


def _qbe(root: Path) -> tuple[Path, list[Path]]:
    """The test expdir of the layer with the best dev MTWV (as `score` picks it), and every QbE expdir."""
    dirs = [d for d in sorted(root.glob("QbE_*_layer*")) if _expdir(root, d.name)]
    if not dirs:
        raise ValueError("no QbE_<split>_layer<L> expdir")
    runs = [read_expdir(d) for d in dirs]
    return _best_dev_layer(runs).path, dirs


def _asv(root: Path) -> Path:
    """The states-N directory of the lowest test EER (s3prl's sv_voxceleb1/test_expdir.sh picks it)."""
    expdir = _expdir(root, "ASV")
    if expdir is None:
        raise ValueError("no ASV expdir")
    steps = sorted(int(c.name[7:-5]) for c in expdir.glob("states-*.ckpt") if c.name[7:-5].isdigit())
    tested = [n for n in steps if n % 20000 == 0] or steps  # run_superb.sh asv_ckpts, test_expdir.sh's list
    untested = [n for n in tested if not _check_inside(root, expdir / f"states-{n}" / "log.txt", want_dir=False)]
    if untested:
        raise ValueError(f"{expdir}: states-{untested[0]}.ckpt not tested yet ({len(untested)} of {len(tested)} "
                         "checkpoints untested); the lowest EER is taken over all of them")
    found = read_asv_eer(expdir)
    if found is None:
        raise ValueError(f"{expdir}: no tested checkpoint (no sv-voxceleb1/test-EER line)")
    where = Path(found[1].rsplit(":", 1)[0])
    chosen = where.parent if where.name == "log.txt" else expdir
    if chosen.parent != expdir:
        raise Refused(f"{found[1]}: the selected EER is not in {expdir}/states-N; refused")
    return chosen


def plan_submission(results_dir) -> Plan:
    """Per submit.py argument, the directory to submit and its files, or why it is left out."""
    root = Path(results_dir).resolve()
    if not root.is_dir():
        raise ValueError(f"{results_dir} is not a directory")
    plan = Plan(root)
    for arg in ARGS:
        try:
            if arg == "qbe":
                expdir, qbe_dirs = _qbe(root)
                plan.scored_expdirs += qbe_dirs
            elif arg == "sv":
                expdir = _asv(root)
                plan.scored_expdirs.append(root / "ASV")
            else:
                name, task = EXPDIRS[arg]
                expdir = _expdir(root, name)
                if expdir is None:
                    raise ValueError(f"no {name} expdir")
                run = _tested(expdir, task)
                if arg.startswith("er_fold") and run.fold != f"fold{arg[-1]}":
                    raise ValueError(f"{expdir} tests fold {run.fold}, not {arg[3:]}")
                if expdir not in plan.scored_expdirs:
                    plan.scored_expdirs.append(expdir)
            entry = _sd_entry(root, expdir) if arg == "sd" else _file_entry(root, arg, expdir)
        except Refused:
            raise
        except (ValueError, CheckpointError, OSError) as err:
            reason = " ".join(str(err).split())
            if arg == "asr_with_lm":
                reason += " (LM decoding runs when ASR_KENLM_MODEL and ASR_LEXICON are set: docs/tasks/asr.md)"
            plan.missing[arg] = reason
            continue
        plan.entries[arg] = entry
    return plan


# ---------------------------------------------------------------- the zip

def zip_members(plan: Plan) -> list[tuple[str, Path | None]]:
    """(name, source) of every member `zip -r predict/` stores: directories (source None, name ending
    in /) before what they hold."""
    files = [member for entry in plan.entries.values() for member in entry.members]
    dirs = {"predict/"}
    for name, _ in files:
        parts = name.split("/")[:-1]
        dirs.update("/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))
    return [(d, None) for d in sorted(dirs)] + sorted(files)


def _copy_bounded(source: Path, sink) -> None:
    with open_regular(source) as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_FILE:
            raise Refused(f"{source}: {size} bytes, more than the {MAX_FILE} a prediction file may hold; refused")
        left = size
        while left > 0 and (block := file.read(min(left, 1 << 20))):
            sink.write(block)
            left -= len(block)
        if left or file.read(1):
            raise ValueError(f"{source} changed size while it was packed")


def _stamp(source: Path) -> tuple:
    """The file's modification time, as zip records it (local time, from 1980 on)."""
    return max(time.localtime(os.lstat(source).st_mtime)[:6], (1980, 1, 1, 0, 0, 0))


def write_predict_zip(plan: Plan, out: Path) -> list[str]:
    """Write predict.zip (through a temporary file, then renamed); its member names."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    members = zip_members(plan)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, source in members:
                if source is None:
                    info = zipfile.ZipInfo(name)
                    info.external_attr = (0o40755 << 16) | 0x10  # a directory, as zip stores one
                    archive.writestr(info, b"")
                    continue
                info = zipfile.ZipInfo(name, _stamp(source))
                info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o100644 << 16
                with archive.open(info, "w", force_zip64=True) as sink:
                    _copy_bounded(source, sink)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return [name for name, _ in members]
