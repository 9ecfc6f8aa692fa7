"""The names a torch pickle may hold, and how fairseq's configuration records become plain data.

    NAMES[(module, name)] -> pickle_reader.Name        # everything else in a file is refused
    plain_record(record, walk)                        # an omegaconf / argparse / Dictionary record -> dicts

Every `.pt` is read by our own pickle interpreter (pickle_reader.py, driven by
torch_files.py); this module is its list of admitted names. None of them is a
callable of torch, omegaconf, argparse, fairseq or numpy: each is a token that
says what our reader builds when the file applies it.

- torch's tensor rebuilds (`_rebuild_tensor_v2`, `_rebuild_tensor`,
  `_rebuild_parameter`) and storage classes (`torch.FloatStorage`, ...): the
  reader rebuilds the tensor itself from the stored bytes, after checking offset,
  sizes and strides (torch_files.py); nothing of `torch._utils` is called.
- `collections.OrderedDict`, `collections.defaultdict` (omegaconf's metadata), `set`
  (protocol 2 writes a set as `set([...])`),
  `_codecs.encode` (protocol 2 writes bytes as `encode(text, "latin1")`): plain
  containers and bytes.
- The container classes of fairseq's releases (omegaconf's DictConfig, ListConfig,
  value nodes and metadata; `argparse.Namespace`; fairseq's `Dictionary`) and numpy
  scalars in the training state: `Record`s that keep the state the file gives them
  (BUILD, once); `plain_record` turns them into dicts, lists and values.
- Builtin types and `typing.Any` (type references in omegaconf's metadata):
  constants, kept as their name; applying one is refused, except `bytes()`
  (protocol 2 writes an empty bytes object so).
"""

from __future__ import annotations

from .pickle_reader import Name, Record

STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                  "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
                  "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}

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
# numpy scalars and dtypes (fairseq's training state): values we do not need, kept as nothing
_RECORDS.update({(m, "scalar"): "opaque" for m in ("numpy.core.multiarray", "numpy._core.multiarray")})
_RECORDS[("numpy", "dtype")] = "opaque"

_TYPES = [("builtins", n) for n in ("dict", "list", "str", "int", "float", "bool", "tuple", "bytes")]
_TYPES += [("__builtin__", n) for n in ("dict", "list", "str", "int", "long", "float", "bool", "tuple", "bytes")] + [("typing", "Any")]


def _names() -> dict:
    names = {
        ("collections", "OrderedDict"): Name("ordered_dict", "collections.OrderedDict"),
        ("collections", "defaultdict"): Name("defaultdict", "collections.defaultdict"),
        ("_codecs", "encode"): Name("encode", "_codecs.encode"),
        ("torch._utils", "_rebuild_tensor_v2"): Name("rebuild_v2", "torch._utils._rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor"): Name("rebuild", "torch._utils._rebuild_tensor"),
        ("torch._utils", "_rebuild_parameter"): Name("parameter", "torch._utils._rebuild_parameter"),
    }
    names.update({(m, "set"): Name("set", f"{m}.set") for m in ("builtins", "__builtin__")})  # protocol 2's sets
    names.update({("torch", s): Name("storage_type", f"torch.{s}", dtype) for s, dtype in STORAGE_DTYPES.items()})
    names.update({key: Name("record", ".".join(key), kind) for key, kind in _RECORDS.items()})
    names.update({key: Name("type", ".".join(key)) for key in _TYPES})
    return names


NAMES = _names()
REFUSED_HINT = ("only tensors, plain containers and the configuration containers of fairseq's releases "
                "(omegaconf configs, argparse.Namespace, fairseq Dictionary) are read")


def plain_record(rec: Record, walk):
    """A record -> plain data, walking (with `walk`, which counts and bounds the work) only
    what we read: a config's content, a node's value, a namespace's fields, a dictionary's
    symbols. Anything else of the record (omegaconf's `_parent`, metadata) is dropped."""
    state = rec.state if isinstance(rec.state, dict) else {}
    if rec.kind in ("dict", "list"):
        content = state.get("_content")
        if isinstance(content, (dict, list)):
            return walk(content)
        return None if content is None else walk(content) if isinstance(content, str) else None
    if rec.kind == "node":
        return walk(state.get("_val"))
    if rec.kind == "namespace":
        return {k: walk(v) for k, v in state.items() if isinstance(k, str)}
    if rec.kind == "dictionary":
        return {"symbols": walk(state.get("symbols", []))}
    return None  # metadata, numpy scalars: nothing we read
