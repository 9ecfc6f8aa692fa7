"""Reading model files safely: nothing is allocated for what a file merely declares.

    meta = checked_meta_model(lambda: WavLM(arch), shapes, path, arch)   # no memory, no init
    model = materialise(meta, state, path)                               # the stored tensors, assigned

A file can declare a huge architecture in a few bytes (40 layers of 4e7 FFN
units). The module is therefore first built on torch's meta device (shapes, no
memory, no random initialisation) and compared with the tensors the file
actually stores (names, shapes, total size); only a match is loaded, by
assigning the stored tensors (`load_state_dict(assign=True)`), so no parameter
is ever allocated for a declaration alone and loading skips the initialisation
a plain build would do. Every failure to read a file is a `CheckpointError`
naming the file and the problem.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .arch import WavLMArch
from .errors import CheckpointError
from .small_files import open_regular
from .torch_files import is_tar_header, read_torch_file

# Constructors that allocate what their arguments declare go to the meta device;
# tensors built from data (torch.tensor: index buffers computed in __init__) stay
# on the CPU, since their data already exists in memory.
_SIZED = {torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
          torch.randint, torch.randperm, torch.arange, torch.eye, torch.linspace, torch.logspace}
_GB = 1e9


class _MetaAllocation(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SIZED and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


@contextmanager
def meta_allocation():
    """Inside: modules are built without memory and without random initialisation."""
    with _MetaAllocation():
        yield


def _size(numel: int) -> str:
    return f"{numel:,} values ({numel * 4 / _GB:.3g} GB as float32)"


def check_budget(arch: WavLMArch, shapes: dict[str, tuple[int, ...]], path) -> None:
    """Refuse, before building anything, an architecture that needs more Python-side work
    (layers, heads, head dimensions) than the file stores values: each of those needs at
    least one stored value, so a matching file cannot be smaller."""
    stored = sum(_numel(s) for s in shapes.values()) + len(shapes)
    units = {"layers": arch.num_layers, "conv layers": len(arch.conv_layers),
             "heads": sum(len(layer.heads) for layer in arch.layers),
             "head dimensions": sum(layer.qk_total + layer.vo_total for layer in arch.layers)}
    for what, count in units.items():
        if count > stored:
            raise CheckpointError(path, f"its architecture declares {count:,} {what}, but the file stores only "
                                        f"{stored:,} values: the declaration does not match the tensors")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def checked_meta_model(factory: Callable[[], nn.Module], shapes: dict[str, tuple[int, ...]], path,
                       arch: WavLMArch | None = None) -> nn.Module:
    """The module `factory` builds, on the meta device, once its state's names and shapes
    are exactly `shapes` (what the file stores); otherwise a CheckpointError naming the
    first differences and both totals."""
    if arch is not None:
        check_budget(arch, shapes, path)
    with meta_allocation():
        model = factory()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    need, have = sum(map(_numel, expected.values())), sum(map(_numel, shapes.values()))
    totals = f"(the architecture needs {_size(need)}; the file stores {_size(have)})"
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        unexpected = [k[:100] + "..." if len(k) > 100 else k for k in map(str, unexpected[:5])]  # the file's names
        raise CheckpointError(path, f"does not match its architecture: missing keys {missing[:5]}, "
                                    f"unexpected keys {unexpected} {totals}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise CheckpointError(path, f"{name} has shape {tuple(shapes[name])}, the architecture needs {shape} "
                                        f"{totals}")
    return model


def materialise(model: nn.Module, state: dict, path) -> nn.Module:
    """`model` (checked, on the meta device) with copies of the stored tensors assigned as its weights.

    Copies, in memory of their own: the readers' tensors may be views of the file's mapping
    (safetensors, torch's mmap), which a later rewrite of the file would change or, truncated,
    turn into a crash. Two names on one stored tensor are refused: the memory a load takes is
    then at most what the file stores (overlapping and zero-stride tensors are refused by the
    readers, torch_files.py). One copy is what loading into an allocated model cost before,
    without the allocation's random initialisation."""
    owned, seen = {}, {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(path, f"{name} is {kind}; weights must be floating-point tensors")
        where = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride()) if tensor.numel() else name
        if where in seen:  # one stored tensor under many names declares more than the file stores
            raise CheckpointError(path, f"{name} and {seen[where]} are one stored tensor: each weight must be "
                                        "stored once; refused")
        seen[where] = name
        tensor = tensor.detach()
        owned[name] = tensor.float() if tensor.dtype != torch.float32 else tensor.clone()
    model.load_state_dict(owned, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the constructor sized but the state does not hold: a bug, not a bad file
        raise RuntimeError(f"loading left tensors on the meta device: {left[:5]}")
    return model


# ---------------------------------------------------------------------------- safetensors
def read_safetensors(path, check: Callable[[dict, dict], None] | None = None) -> tuple[dict, dict]:
    """(metadata, tensors) of a safetensors file; `check(metadata, shapes)` runs on the header
    alone, before any tensor is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            if check is not None:
                check(meta, shapes)
            return meta, {k: f.get_tensor(k) for k in shapes}
    except CheckpointError:
        raise
    except Exception as err:  # safetensors' own errors, OSError, a header that is not JSON, ...
        raise CheckpointError(path, f"unreadable safetensors file (truncated or corrupt?): "
                                    f"{type(err).__name__}: {str(err)[:200]}") from None


# ---------------------------------------------------------------------------- torch pickles
def torch_load(path: Path, mmap: bool = False):
    """A torch checkpoint read as data by our own reader (torch_files.py; torch.load is never
    called): nothing a file names is executed, nothing is written, no global state changes, and
    every failure is a CheckpointError. `mmap`: tensors are views of a private mapping of the
    file, for callers that copy them (materialise); otherwise they own their memory."""
    path = Path(path)
    try:
        return read_torch_file(path, mmap=mmap)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError(path, "reading it ran out of memory") from None
    except Exception as err:  # RuntimeError of a tensor view, ValueError, ...: a corrupt file
        raise CheckpointError(path, f"unreadable checkpoint (truncated or corrupt?): "
                                    f"{type(err).__name__}: {str(err)[:200]}") from None


def check_torch_file(path: Path) -> bool:
    """Before any reader opens it: torch's zip format (True) or a legacy pickle (False) that is
    not also a tar archive; anything else is an unknown format. The zip's records are checked by
    the reader (torch_files.py) before anything is unpickled."""
    try:
        with open_regular(path) as f:
            head = f.read(512)
    except CheckpointError:
        raise
    if head[:4] == b"PK\x03\x04":
        return True
    if not head.startswith(b"\x80"):
        raise CheckpointError(path, "unknown format (neither a torch checkpoint, safetensors, nor a directory)")
    if is_tar_header(head):
        raise CheckpointError(path, "a tar archive (torch's pre-1.0 format, extracted with tarfile by torch.load): refused")
    return False
