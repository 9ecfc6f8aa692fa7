"""Read fairseq's original checkpoints without fairseq and without running code the file names.

    ckpt = load_fairseq_checkpoint(path)   # plain dicts, lists, numbers, strings and tensors

fairseq's releases (hubert_base_ls960.pt, wav2vec_small.pt, the Large ones)
pickle their configuration as omegaconf containers (`cfg`) or as an
`argparse.Namespace` (`args`), which `torch.load(weights_only=True)` refuses.
This unpickler admits a short list of names:

- torch's tensor rebuilders and `collections.OrderedDict` (what every state dict holds);
- the container classes those releases contain (omegaconf's DictConfig, ListConfig,
  value nodes and their metadata; argparse.Namespace; fairseq's Dictionary; numpy
  scalars in the training state). For these the unpickler hands out stand-ins of ours
  that only record the state the file gives them; nothing of omegaconf, argparse,
  fairseq or numpy is imported or run. `plain` then turns the stand-ins into dicts,
  lists and values.

Any other name is refused with an error that names it, before anything is called.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

# Callables the pickle may call (REDUCE), exactly these objects.
_TRUSTED = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("_codecs", "encode"): __import__("codecs").encode,  # protocol 2 writes bytes as encode(str, "latin1")
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
}
# Classes whose instances become records (NEWOBJ + BUILD): their state, nothing else.
_RECORDS = {
    ("omegaconf.dictconfig", "DictConfig"): "dict",
    ("omegaconf.listconfig", "ListConfig"): "list",
    ("omegaconf.base", "ContainerMetadata"): "meta",
    ("omegaconf.base", "Metadata"): "meta",
    ("argparse", "Namespace"): "namespace",
    ("fairseq.data.dictionary", "Dictionary"): "dictionary",
}
_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "BytesNode", "PathNode")
_RECORDS.update({("omegaconf.nodes", n): "node" for n in _NODES})
# Plain builtin types (type references in omegaconf's metadata, `long` for Python 2 ints):
# calling one builds plain data.
_BUILTINS = {"dict": dict, "list": list, "str": str, "int": int, "long": int, "float": float, "bool": bool}
_TRUSTED.update({(mod, n): t for mod in ("builtins", "__builtin__") for n, t in _BUILTINS.items()})
# Type references never called: kept as their name.
_TYPE_NAMES = {("typing", "Any")}
# Values we do not need and drop (numpy scalars in the training state): recorded as opaque.
_OPAQUE = {(m, "scalar") for m in ("numpy.core.multiarray", "numpy._core.multiarray")} | {("numpy", "dtype")}


class _Record:
    """A stand-in for an instance of an admitted class: remembers the state the pickle sets."""

    kind = "record"
    state = None  # NEWOBJ makes instances with __new__ only

    def __init__(self, *args):  # REDUCE (numpy's scalar and dtype): the arguments are not kept
        pass

    def __setstate__(self, state):
        self.state = state


class _Opaque(_Record):
    kind = "opaque"


class _TypeName:
    def __init__(self, name: str):
        self.name = name


def _defaultdict(factory=None):
    """omegaconf's metadata holds collections.defaultdict(dict): a plain dict is all we need."""
    return {}


_RECORD_CLASSES: dict[str, type] = {}


def _record_class(kind: str) -> type:
    if kind not in _RECORD_CLASSES:
        _RECORD_CLASSES[kind] = type(f"_{kind.title()}Record", (_Record,), {"kind": kind})
    return _RECORD_CLASSES[kind]


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _TRUSTED:
            return _TRUSTED[key]
        if key in _RECORDS:
            return _record_class(_RECORDS[key])
        if key in _TYPE_NAMES:
            return _TypeName(f"{module}.{name}")
        if key == ("collections", "defaultdict"):
            return _defaultdict
        if key in _OPAQUE:
            return _Opaque
        raise pickle.UnpicklingError(
            f"refused global {module}.{name}: only torch tensors, OrderedDict and the containers of fairseq's "
            "releases (omegaconf configs, argparse.Namespace, fairseq Dictionary) are read"
        )


class _PickleModule:
    """What torch.load needs of a pickle module, with our unpickler."""

    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(f, **kw):
        return RestrictedUnpickler(f, **kw).load()


def load_fairseq_checkpoint(path) -> object:
    """torch.load through the restricted unpickler, then `plain`. Raises pickle.UnpicklingError on a refused name."""
    raw = torch.load(Path(path), map_location="cpu", weights_only=False, pickle_module=_PickleModule)
    return plain(raw)


def plain(obj):
    """Stand-ins -> dicts, lists and values; containers walked; tensors kept."""
    if isinstance(obj, _Record):
        return _plain_record(obj)
    if isinstance(obj, _TypeName):
        return obj.name
    if isinstance(obj, dict):  # OrderedDict stays one (state dicts)
        return type(obj)((k, plain(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    return obj


def _plain_record(rec: _Record):
    state = rec.state if isinstance(rec.state, dict) else {}
    if rec.kind in ("dict", "list"):
        content = state.get("_content")
        if isinstance(content, (dict, list)):
            return plain(content)
        return None if content is None else str(content)  # "???" (missing) or an interpolation string
    if rec.kind == "node":
        return plain(state.get("_val"))
    if rec.kind == "namespace":
        return {k: plain(v) for k, v in state.items()}
    if rec.kind == "dictionary":
        return {"symbols": plain(state.get("symbols", []))}
    return None  # metadata, numpy scalars: nothing we read
