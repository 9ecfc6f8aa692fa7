"""What a training run writes: checkpoints (atomic), scalar logs, the summary.

    RUN_DIR/
      config.yaml                   the resolved config
      checkpoints/step-<N>/         student.safetensors + state.pt, written to a temp dir then renamed
      log.jsonl                     one JSON object of scalars per log step
      tb/                           TensorBoard events (the same scalars)
      summary.json                  at the end
      skipped_audio.tsv             audio files found unusable when read (reason<TAB>path), if any
      .lock                         held while a prune runs (training/lock.py)

Nothing inside RUN_DIR is followed through a symbolic link (run_files.py): a link
among these entries is refused in one line, before anything is read or written.

`student.safetensors` holds the student's weights with every gate's
`log_alpha`; its metadata holds the architecture (JSON, as our model files)
and the prune options. `state.pt` holds only tensors, numbers, strings, lists
and dicts, and is read by our own reader (torch_files.py; never torch.load).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .arch import WavLMArch
from .checkpoints import ARCH_KEY, arch_from_metadata
from .errors import CheckpointError
from .gating import PruneConfig
from .model.dropout import rates_from_metadata, rates_metadata
from .model.prunable import make_prunable
from .model.wavlm import WavLM
from .run_files import (NOFOLLOW, append_to, make_dir, new_temp_file, open_run_file, read_run_file, refuse_link,
                        remove_tree, replace_into, write_replacing)
from .safe_load import checked_meta_model, materialise, read_safetensors, torch_load

log = logging.getLogger(__name__)

PRUNE_KEY = "pruned_upstream_prune"
STEP_KEY = "pruned_upstream_step"
STUDENT_FILE, STATE_FILE = "student.safetensors", "state.pt"


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step}"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temp dirs of a killed save are ignored);
    RunLinkError when checkpoints/, a step-N or a file in one is a symbolic link."""
    root = Path(run_dir) / "checkpoints"
    refuse_link(root)
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        step = path.name[len("step-"):]
        if not step.isdigit():
            continue
        files = (path / STUDENT_FILE, path / STATE_FILE)
        for item in (path, *files):
            refuse_link(item)
        if all(item.is_file() for item in files):
            found.append((int(step), path))
    return sorted(found)


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, I/O error): the previous ones stay intact."""


def save_checkpoint(run_dir, step: int, student: torch.nn.Module, prune: dict | None, state: dict,
                    keep: int = 0) -> Path:
    """Write step-<step>/ atomically: into a temp dir, flushed, then renamed; keep the newest `keep`.

    A failed write (ENOSPC, EFBIG, EIO, ...) removes the temp dir and raises
    CheckpointWriteError naming the previous complete checkpoint; nothing
    complete is touched before the new one is (older ones are removed after).
    """
    from safetensors import SafetensorError

    final = checkpoint_dir(run_dir, step)
    refuse_link(final)  # a link is never renamed over nor removed: its target stays untouched
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}-{os.urandom(4).hex()}")  # a fresh name: mkdir below
    try:
        _write_checkpoint(tmp, step, student, prune, state)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save and safetensors wrap the OSError
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise CheckpointWriteError(
            f"cannot write checkpoint {final} ({reason}); "
            + (f"the previous checkpoint {previous} is complete: free space, then continue with "
               f"`pruned-upstream prune --out {run_dir} --resume`" if previous else "no earlier checkpoint exists")
        ) from err
    refuse_link(final)
    if final.exists():  # the same step saved again (a resumed run re-saving its last step)
        old = final.with_name(f".tmp-old-{final.name}-{os.getpid()}-{os.urandom(4).hex()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)  # a real directory (not a link: refused above)
    else:
        tmp.rename(final)
    _fsync(final.parent)
    _prune_old(run_dir, keep)
    return final


def _write_checkpoint(tmp: Path, step: int, student: torch.nn.Module, prune: dict | None, state: dict) -> None:
    from safetensors.torch import save_file

    make_dir(tmp.parent)
    tmp.mkdir()  # fails on anything already there, a planted link included: the files below are new
    weights = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    meta = {ARCH_KEY: student.arch.to_json(), STEP_KEY: str(step), **rates_metadata(student)}  # rates: model/dropout.py
    if prune is not None:
        meta[PRUNE_KEY] = json.dumps(prune)
    save_file(weights, str(tmp / STUDENT_FILE), metadata=meta)
    torch.save(state, tmp / STATE_FILE)
    _fsync(tmp / STUDENT_FILE, tmp / STATE_FILE, tmp)


def _fsync(*paths: Path) -> None:
    for item in paths:
        fd = os.open(item, os.O_RDONLY | NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prune_old(run_dir, keep: int) -> None:
    found = list_checkpoints(run_dir)
    for _, path in found[: max(0, len(found) - keep)] if keep > 0 else []:
        remove_tree(path)  # a link is refused (list_checkpoints), never followed


def clean_temp(run_dir) -> None:
    """Remove the temp dirs a killed save left behind (a link there: the link only, never its target)."""
    root = Path(run_dir) / "checkpoints"
    refuse_link(root)
    for path in root.glob(".tmp-*step-*"):
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


def read_student_file(path, extra: dict | None = None) -> tuple[WavLMArch, dict | None, dict[str, torch.Tensor], int]:
    """(arch, prune options or None, weights, step) of a checkpoint's student.safetensors;
    `extra`, when given, receives the recorded dropout rates ("dropout_rates", model/dropout.py).

    The weights' names and shapes are checked against the architecture and its gates on
    the header, before any is read; any failure to read the file is a CheckpointError."""
    found = {}

    def check(meta: dict, shapes: dict) -> None:
        if ARCH_KEY not in meta:
            raise CheckpointError(path, "no architecture in its metadata; not a training checkpoint")
        arch, prune = arch_from_metadata(meta, path), _prune_options(meta, path)
        try:
            step = int(meta.get(STEP_KEY, -1))
        except ValueError:
            raise CheckpointError(path, f"{STEP_KEY} = {meta[STEP_KEY]!r} is not a step number") from None
        try:
            rates = rates_from_metadata(meta)
        except ValueError as err:
            raise CheckpointError(path, f"bad dropout metadata: {err}") from None
        checked_meta_model(lambda: _student(arch, prune), shapes, path, arch)
        found.update(arch=arch, prune=prune, step=step)
        if extra is not None:
            extra["dropout_rates"] = rates

    _, weights = read_safetensors(path, check)
    return found["arch"], found["prune"], weights, found["step"]


def _prune_options(meta: dict, path) -> dict | None:
    if PRUNE_KEY not in meta:
        return None
    try:
        prune = json.loads(meta[PRUNE_KEY])
        gates = PruneConfig(list(prune["kinds"]), prune["ste"], float(prune["init_keep"]))
        gates.check()
        if not isinstance(gates.ste, dict):
            raise TypeError(f"ste must be a bool or a mapping of kinds, found {type(prune['ste']).__name__}")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise CheckpointError(path, f"bad prune options in its metadata ({type(err).__name__}: {err})") from None
    return prune


def _student(arch: WavLMArch, prune: dict | None) -> WavLM:
    model = WavLM(arch)
    if prune is not None:
        with torch.random.fork_rng(devices=[]):  # the gates' initialisation must not move the caller's RNG
            make_prunable(model, PruneConfig(tuple(prune["kinds"]), prune["ste"], prune["init_keep"]))
    return model


# What the trainer reads back from state.pt on --resume (training/trainer.py `save`).
STATE_KEYS = {"step": int, "optimizer": dict, "scheduler": dict, "lagrangian": dict, "distiller": dict,
              "rng": dict, "data": dict}


def read_state(ckpt: Path) -> dict:
    """state.pt of a checkpoint (safe_load.torch_load: our reader); CheckpointError when unreadable
    or without what a resumed run needs."""
    path = Path(ckpt) / STATE_FILE
    refuse_link(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file: an incomplete checkpoint")
    state = torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(path, f"expected a dict, found {type(state).__name__}")
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            found = type(state[key]).__name__ if key in state else "nothing"
            raise CheckpointError(path, f"{key!r} must be a {kind.__name__}, found {found}")
    return state


def resolve_checkpoint(path) -> Path:
    """A run directory -> its newest checkpoint; a checkpoint directory -> itself."""
    path = Path(path)
    refuse_link(path / STUDENT_FILE)
    if (path / STUDENT_FILE).is_file():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(path, f"neither a training checkpoint nor a run directory with one "
                                    f"(expected {STUDENT_FILE} or checkpoints/step-<N>/)")
    return ckpt


def load_student(path) -> WavLM:
    """A run directory (its newest checkpoint) or a checkpoint directory -> the student, eval mode."""
    file = resolve_checkpoint(path) / STUDENT_FILE
    extra: dict = {}
    arch, prune, weights, _ = read_student_file(file, extra)
    student = materialise(checked_meta_model(lambda: _student(arch, prune), weights_shapes(weights), file, arch),
                          weights, file).eval()
    student.dropout_rates = extra["dropout_rates"]  # the teacher's, recorded for the export; never active here
    return student


def weights_shapes(weights: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in weights.items()}


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python generators, as tensors and plain lists."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ---------------------------------------------------------------------------- logs
class ScalarLog:
    """log.jsonl (always) and TensorBoard events (torch's writer, else tensorboardX, else none)."""

    def __init__(self, run_dir, tensorboard: bool = True, resume_step: int | None = None):
        self.path = Path(run_dir) / "log.jsonl"
        if resume_step is not None:
            truncate_log(self.path, resume_step)
        self.writer = _tensorboard_writer(Path(run_dir) / "tb", resume_step) if tensorboard else None

    def write(self, step: int, scalars: dict, extra: dict | None = None) -> None:
        try:
            with append_to(self.path) as f:  # O_NOFOLLOW: a link, dangling or not, is refused
                f.write(json.dumps({"step": step, **scalars, **(extra or {})}) + "\n")
        except OSError as err:  # full disk, quota, I/O error: a line cut short is dropped on resume (read_log)
            raise RunWriteError(self.path, err) from None
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(log_dir: Path, resume_step: int | None):
    purge = None if resume_step is None else resume_step + 1  # drop events logged after the checkpoint
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            log.warning("neither tensorboard nor tensorboardX is installed: scalars go to log.jsonl only")
            return None
    return SummaryWriter(str(log_dir), purge_step=purge)


def truncate_log(path: Path, step: int) -> None:
    """Drop the records after `step` (a resumed run writes them again): the kept lines go to a
    new temp file, renamed over the log; a link is refused."""
    refuse_link(path)
    if not path.exists():
        return
    try:
        with new_temp_file(path) as (f, tmp):
            for line, row in _log_rows(path):  # a torn last line goes too
                if row["step"] <= step:
                    f.write(line.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
            f.close()
            replace_into(tmp, path)
    except OSError as err:
        raise RunWriteError(path, err) from None


def read_log(run_dir) -> list[dict]:
    """The rows of RUN_DIR/log.jsonl (see _log_rows)."""
    path = Path(run_dir) / "log.jsonl"
    refuse_link(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: not a run directory, or no step was logged yet")
    return [row for _, row in _log_rows(path)]


LOG_LINE = 1 << 20  # bytes: one log.jsonl line (a few KB for 24 layers); a longer one is refused


def _log_rows(path: Path):
    """(line, row) of log.jsonl, read line by line (never through a link, each line bounded).
    A last line cut short (a run killed mid-write, no newline) is dropped with a warning; any
    other line that is not a JSON object with an integer `step` is a CheckpointError naming the
    file and line."""
    try:
        f = open_run_file(path)
    except OSError as err:
        raise CheckpointError(path, f"unreadable ({type(err).__name__}: {err})") from None
    with f:
        for number, raw in enumerate(iter(lambda: f.readline(LOG_LINE + 1), b""), 1):
            where, torn = f"{path}:{number}", not raw.endswith(b"\n")  # no newline: the end of the file
            if len(raw) > LOG_LINE:
                raise CheckpointError(where, f"a line longer than {LOG_LINE:,} bytes; refused")
            try:
                line = raw.decode("utf-8").rstrip("\n")
            except UnicodeDecodeError as err:
                raise CheckpointError(path, f"unreadable: line {number} is not UTF-8 (byte {err.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                if torn:  # the file does not end with a newline: a torn last write
                    log.warning("%s: an incomplete last line (a run killed while writing it?) is ignored", where)
                    continue
                raise CheckpointError(where, f"not a JSON line ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row.get("step"), bool):
                raise CheckpointError(where, "expected a JSON object with an integer 'step'")
            yield line, row


def read_summary(run_dir) -> dict:
    """RUN_DIR/summary.json (written at the end of a run); CheckpointError when unreadable."""
    path = Path(run_dir) / "summary.json"
    refuse_link(path)
    try:
        summary = json.loads(read_run_file(path).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, "no such file: the run has not finished") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(path, f"unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(summary, dict):
        raise CheckpointError(path, f"expected a JSON object, found {type(summary).__name__}")
    return summary


def write_json(path, data: dict) -> None:
    """A new temp file (O_EXCL, a fresh name) renamed over `path`; `path` a link: refused."""
    path = Path(path)
    try:
        write_replacing(path, json.dumps(data, indent=2) + "\n")
    except OSError as err:  # the previous file, if any, stays whole; the temp file is removed
        raise RunWriteError(path, err) from None


class RunWriteError(OSError):
    """A run's log or summary could not be written: one line naming the file and what to do."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"cannot write {path} ({err.strerror or err}); the run stopped, its last complete "
                         f"checkpoint stays: free space, then `pruned-upstream prune --out {path.parent} --resume`")
