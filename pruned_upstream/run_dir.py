"""What a training run writes: checkpoints (atomic), scalar logs, the summary.

    RUN_DIR/
      config.yaml                   the resolved config
      checkpoints/step-<N>/         student.safetensors + state.pt, written to a temp dir then renamed
      log.jsonl                     one JSON object of scalars per log step
      tb/                           TensorBoard events (the same scalars)
      summary.json                  at the end
      skipped_audio.tsv             audio files found unusable when read (reason<TAB>path), if any
      .lock                         held while a prune runs (training/lock.py)

`student.safetensors` holds the student's weights with every gate's
`log_alpha`; its metadata holds the architecture (JSON, as our model files)
and the prune options. `state.pt` holds only tensors, numbers, strings, lists
and dicts, and is read with `torch.load(weights_only=True)`.
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
from .model.prunable import make_prunable
from .model.wavlm import WavLM
from .safe_load import checked_meta_model, materialise, read_safetensors, torch_load

log = logging.getLogger(__name__)

PRUNE_KEY = "pruned_upstream_prune"
STEP_KEY = "pruned_upstream_step"
STUDENT_FILE, STATE_FILE = "student.safetensors", "state.pt"


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step}"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temp dirs of a killed save are ignored)."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        step = path.name[len("step-"):]
        if step.isdigit() and (path / STUDENT_FILE).is_file() and (path / STATE_FILE).is_file():
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
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    try:
        _write_checkpoint(tmp, step, student, prune, state)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save and safetensors wrap the OSError
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise CheckpointWriteError(
            f"cannot write checkpoint {final} ({reason}); "
            + (f"the previous checkpoint {previous} is complete: free space, then continue with "
               f"`pruned-upstream prune --out {run_dir} --resume`" if previous else "no earlier checkpoint exists")
        ) from err
    if final.exists():  # the same step saved again (a resumed run re-saving its last step)
        old = final.with_name(f".tmp-old-{final.name}-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)
    _prune_old(run_dir, keep)
    return final


def _write_checkpoint(tmp: Path, step: int, student: torch.nn.Module, prune: dict | None, state: dict) -> None:
    from safetensors.torch import save_file

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    meta = {ARCH_KEY: student.arch.to_json(), STEP_KEY: str(step)}
    if prune is not None:
        meta[PRUNE_KEY] = json.dumps(prune)
    save_file(weights, str(tmp / STUDENT_FILE), metadata=meta)
    torch.save(state, tmp / STATE_FILE)
    _fsync_dir(tmp)


def _fsync_dir(path: Path) -> None:
    for item in [*path.iterdir(), path] if path.is_dir() else [path]:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prune_old(run_dir, keep: int) -> None:
    found = list_checkpoints(run_dir)
    for _, path in found[: max(0, len(found) - keep)] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def clean_temp(run_dir) -> None:
    """Remove the temp dirs a killed save left behind."""
    for path in (Path(run_dir) / "checkpoints").glob(".tmp-*step-*"):
        shutil.rmtree(path, ignore_errors=True)


def read_student_file(path) -> tuple[WavLMArch, dict | None, dict[str, torch.Tensor], int]:
    """(arch, prune options or None, weights, step) of a checkpoint's student.safetensors.

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
        checked_meta_model(lambda: _student(arch, prune), shapes, path, arch)
        found.update(arch=arch, prune=prune, step=step)

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
    """state.pt of a checkpoint (torch.load(weights_only=True)); CheckpointError when unreadable
    or without what a resumed run needs."""
    path = Path(ckpt) / STATE_FILE
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
    arch, prune, weights, _ = read_student_file(file)
    return materialise(checked_meta_model(lambda: _student(arch, prune), weights_shapes(weights), file, arch),
                       weights, file).eval()


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
            with open(self.path, "a") as f:
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
    """Drop the records after `step` (a resumed run writes them again)."""
    if not path.is_file():
        return
    kept = [line for line, row in _log_rows(path) if row["step"] <= step]  # a torn last line goes too
    path.write_text("".join(line + "\n" for line in kept))


def read_log(run_dir) -> list[dict]:
    """The rows of RUN_DIR/log.jsonl (see _log_rows)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a run directory, or no step was logged yet")
    return [row for _, row in _log_rows(path)]


def _log_rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) of log.jsonl. A last line cut short (a run killed mid-write, no newline) is
    dropped with a warning; any other line that is not a JSON object with an integer `step`
    is a CheckpointError naming the file and line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"unreadable ({type(err).__name__}: {err})") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            if number == len(lines):  # the file does not end with a newline: a torn last write
                log.warning("%s:%d: an incomplete last line (a run killed while writing it?) is ignored", path, number)
                continue
            raise CheckpointError(f"{path}:{number}", f"not a JSON line ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row.get("step"), bool):
            raise CheckpointError(f"{path}:{number}", "expected a JSON object with an integer 'step'")
        rows.append((line, row))
    return rows


def read_summary(run_dir) -> dict:
    """RUN_DIR/summary.json (written at the end of a run); CheckpointError when unreadable."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(path, "no such file: the run has not finished") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(path, f"unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(summary, dict):
        raise CheckpointError(path, f"expected a JSON object, found {type(summary).__name__}")
    return summary


def write_json(path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    except OSError as err:  # the previous file, if any, stays whole
        tmp.unlink(missing_ok=True)
        raise RunWriteError(path, err) from None


class RunWriteError(OSError):
    """A run's log or summary could not be written: one line naming the file and what to do."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"cannot write {path} ({err.strerror or err}); the run stopped, its last complete "
                         f"checkpoint stays: free space, then `pruned-upstream prune --out {path.parent} --resume`")
