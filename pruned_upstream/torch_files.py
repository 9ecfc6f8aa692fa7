"""torch's checkpoint files (`.pt`, `.bin`, `.ckpt`) read as data: no torch.load, no code, no writes.

    obj = read_torch_file(path)              # dicts, lists, values and CPU tensors
    obj = read_torch_file(path, mmap=False)  # tensors in memory of their own (not views of the file)

`torch.load` does more than unpickle, whatever its `pickle_module`: a zip with
`constants.pkl` goes to `torch.jit.load` (TorchScript, which runs code), a legacy
file is first tried as a tar archive and extracted with an unfiltered `tarfile`,
legacy "module" persistent ids write source patches, and its rebuild functions
are module globals a crafted pickle can modify (torch/serialization.py,
`_load`, `_legacy_load`). So this module reads both of torch's containers itself:

1. The container is checked before anything is unpickled. Zip (torch >= 1.6):
   every member is one of torch's own record names (`data.pkl`, `data/<key>`,
   `version`, `byteorder`, ...) under one prefix, stored uncompressed, not
   overlapping another, within the file; TorchScript (`constants.pkl`, `code/`)
   and anything else is refused. Legacy (first byte 0x80): refused if its first
   512 bytes carry a valid tar header checksum, then read as torch's five
   pickles (magic number, protocol 1001, system info, the object, the storage
   keys) followed by each storage's element count and raw bytes.
2. The object is unpickled by pickle_reader.py with the names of fairseq_pickle.NAMES;
   the only persistent id read is `('storage', <storage class>, key, location,
   numel[, None])`.
3. A tensor rebuild is checked against its storage before any view is made:
   offset and sizes non-negative, no stride 0 or negative on a dimension longer
   than 1, no two elements at one place, the extent inside the storage; and no
   two tensors overlap in one storage (shared storage is how 4 GiB were declared
   in 17 KB). Every storage's bytes are in the file, so the tensors returned hold
   at most what the file stores.
4. The result is walked once into plain data (`finish`): records become dicts,
   tensors are made (views of a private, copy-on-write mapping of the file, or
   copies with mmap=False), cycles are refused, nesting is capped, and every visit
   is counted against a budget proportional to the pickle's size, so a pickle that
   reuses its memo to describe 2^60 leaves is refused after a bounded walk.

Every refusal is a `CheckpointError` naming the file and the reason in one line.
"""

from __future__ import annotations

import mmap as _mmap
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import CheckpointError
from .fairseq_pickle import NAMES, REFUSED_HINT, plain_record
from .small_files import open_regular
from .pickle_reader import SCALARS, Name, PickleReader, Record, Refused, plain_key, short

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
MAX_DEPTH = 200          # nesting of the returned data
WALK_BASE = 1_000_000    # visits allowed in the final walk, plus WALK_PER_OP per opcode
WALK_PER_OP = 4
_RECORD = re.compile(r"(data\.pkl|version|\.format_version|\.storage_alignment|byteorder|\.data/version|"
                     r"\.data/serialization_id|data/[A-Za-z0-9_]{1,64})")
_DTYPES = {name: getattr(torch, name) for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32",
                                                     "int16", "int8", "uint8", "bool")}


class _Storage:
    __slots__ = ("key", "dtype", "numel", "offset", "tensor")

    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel, self.offset, self.tensor = key, dtype, numel, None, None


class _TensorRef:
    __slots__ = ("storage", "offset", "size", "stride", "tensor")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride, self.tensor = storage, offset, size, stride, None


class _Reading:
    """The state of reading one file: its mapping, storages, tensor references, refusals."""

    def __init__(self, path: Path, buf, copy: bool, kind: str):
        self.path, self.buf, self.copy, self.kind = path, buf, copy, kind
        self.storages: dict[str, _Storage] = {}
        self.refs: dict[tuple, _TensorRef] = {}
        self.ops = 0

    def unpickle(self, start: int, end: int | None = None, persistent: bool = True):
        view = self.buf if end is None else memoryview(self.buf)[:end]
        reader = PickleReader(view, start, NAMES, self.persistent if persistent else None, self.apply)
        try:
            value, pos = reader.load()
        except Refused as err:
            text, what = str(err), f"a torch {self.kind} checkpoint"
            if text.startswith("refused global"):
                raise CheckpointError(self.path, f"{text} in the pickle of {what}: loading it would run code the "
                                      f"file names; {REFUSED_HINT}. "
                                      "If you trust the file, convert it once in a trusted session: "
                                      "ck = torch.load(path, weights_only=False); torch.save({'cfg': dict(ck['cfg']), "
                                      "'model': ck['model']}, 'converted.pt')") from None
            raise CheckpointError(self.path, f"refused: {text} (in the pickle of {what})") from None
        self.ops += reader.ops
        return value, pos

    # ---------------------------------------------------------------- what the pickle may build
    def persistent(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], Name) and pid[1].kind == "storage_type" and isinstance(pid[2], str)
                and isinstance(pid[3], str) and type(pid[4]) is int and pid[4] >= 0 and pid[5:] in ((), (None,))):
            raise Refused(f"a persistent id that is not a storage ({short(pid[0] if isinstance(pid, tuple) and pid else pid)}"
                          "): only ('storage', class, key, location, size) is read")
        dtype, key, numel = _DTYPES[pid[1].extra], pid[2], pid[4]
        known = self.storages.setdefault(key, _Storage(key, dtype, numel))
        if (known.dtype, known.numel) != (dtype, numel):
            raise Refused(f"storage {short(key)} declared twice with different types or sizes")
        return known

    def apply(self, how: str, name: Name, args: tuple):
        kind = name.kind
        if kind == "record":
            return Record(name.extra)
        if how != "REDUCE":
            raise Refused(f"{how} of {name.dotted}: only records are made with {how}")
        if kind == "ordered_dict":
            return _ordered(args)
        if kind == "defaultdict":
            return {}
        if kind == "type" and name.dotted.endswith(".bytes") and not args:  # protocol 2's b"": bytes()
            return b""
        if kind == "set" and (not args or len(args) == 1 and isinstance(args[0], list)):
            return {plain_key(v) for v in (args[0] if args else ())}
        if kind == "encode" and len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError:
                raise Refused("_codecs.encode of a string that is not latin-1") from None
        if kind in ("rebuild_v2", "rebuild") and len(args) >= 4 and isinstance(args[0], _Storage):
            return self.tensor(*args[:4])
        if kind == "parameter" and 1 <= len(args) <= 3 and isinstance(args[0], _TensorRef):
            return args[0]
        raise Refused(f"{name.dotted} applied to arguments it does not take ({', '.join(short(a) for a in args[:4])})")

    def tensor(self, storage: _Storage, offset, size, stride) -> _TensorRef:
        if not (_ints(size) and _ints(stride) and len(size) == len(stride) and type(offset) is int and offset >= 0
                and all(0 <= d < 2 ** 62 for d in size) and len(size) <= 32):
            raise Refused(f"a tensor of storage {short(storage.key)} with an offset, sizes or strides that are not "
                          "non-negative integers of one length")
        numel = 1
        for d in size:
            numel *= d
        if numel:
            extent = 1
            for d, s in sorted(((d, s) for d, s in zip(size, stride) if d > 1), key=lambda p: p[1]):
                if s < extent:  # 0, negative, or two elements at one place
                    raise Refused(f"a tensor of storage {short(storage.key)} with stride {s} for a dimension of "
                                  f"{d}: zero, negative and overlapping strides are refused")
                extent += (d - 1) * s
            if offset + extent > storage.numel:
                raise Refused(f"a tensor of storage {short(storage.key)} reaches element {offset + extent:,} of "
                              f"{storage.numel:,}")
        key = (storage.key, offset, size, tuple(s if d > 1 else 0 for d, s in zip(size, stride)) if numel else ())
        return self.refs.setdefault(key, _TensorRef(storage, offset, size, stride))

    # ---------------------------------------------------------------- after the pickle
    def check_overlaps(self) -> None:
        spans: dict[str, list] = {}
        for ref in self.refs.values():
            numel = _numel(ref.size)
            if numel:
                last = ref.offset + sum((d - 1) * s for d, s in zip(ref.size, ref.stride) if d > 1)
                spans.setdefault(ref.storage.key, []).append((ref.offset, last))
        for key, pairs in spans.items():
            pairs.sort()
            for (_, end), (start, _) in zip(pairs, pairs[1:]):
                if start <= end:
                    raise CheckpointError(self.path, f"two tensors share elements of storage {short(key)}: "
                                          "overlapping tensors are refused (they declare more than the file stores)")

    def make(self, ref: _TensorRef) -> torch.Tensor:
        if ref.tensor is None:
            base = self.storage_tensor(ref.storage)
            if not _numel(ref.size):
                ref.tensor = torch.empty(ref.size, dtype=ref.storage.dtype)
            else:
                ref.tensor = base.as_strided(ref.size, ref.stride, ref.offset)
        return ref.tensor

    def storage_tensor(self, st: _Storage) -> torch.Tensor:
        if st.tensor is None:
            if st.offset is None:
                raise CheckpointError(self.path, f"storage {short(st.key)} is used but not stored in the file")
            size = st.numel * _itemsize(st.dtype)
            if not size:
                st.tensor = torch.empty(0, dtype=st.dtype)
            elif self.copy:
                st.tensor = torch.frombuffer(bytearray(memoryview(self.buf)[st.offset: st.offset + size]), dtype=st.dtype)
            else:  # a view, aligned or not (legacy storages rarely are): the mmap caller copies it (materialise)
                st.tensor = torch.frombuffer(self.buf, dtype=st.dtype, count=st.numel, offset=st.offset)
        return st.tensor

    def finish(self, obj):
        """`obj` as plain data with tensors; every visit counted, cycles and deep nesting refused."""
        budget = [WALK_BASE + WALK_PER_OP * self.ops]
        active: set[int] = set()

        def walk(value, depth: int = 0):
            budget[0] -= 1
            if budget[0] < 0:
                raise CheckpointError(self.path, "its pickle describes more values than it stores (shared values "
                                      "expanded beyond the bound): refused as a denial of service")
            if isinstance(value, SCALARS):
                return value
            if isinstance(value, _TensorRef):
                return self.make(value)
            if isinstance(value, Name):
                if value.kind in ("type", "set"):  # a type named as a value (omegaconf's metadata)
                    return value.dotted
                raise CheckpointError(self.path, f"{value.dotted} stands in the data unapplied; refused")
            if isinstance(value, _Storage):
                raise CheckpointError(self.path, "a bare storage stands in the data; only tensors are read")
            if depth > MAX_DEPTH:
                raise CheckpointError(self.path, f"data nested deeper than {MAX_DEPTH} levels; refused")
            if id(value) in active:
                raise CheckpointError(self.path, "its data contains itself (a cycle); refused")
            active.add(id(value))
            try:
                down = lambda v: walk(v, depth + 1)  # noqa: E731
                if isinstance(value, Record):
                    return plain_record(value, down)
                if isinstance(value, dict):  # an OrderedDict stays one (state dicts)
                    return type(value)((k, down(v)) for k, v in value.items())
                if isinstance(value, list):
                    return [down(v) for v in value]
                if isinstance(value, tuple):
                    return tuple(down(v) for v in value)
                if isinstance(value, (set, frozenset)):
                    return type(value)(down(v) for v in value)
            finally:
                active.discard(id(value))
            raise CheckpointError(self.path, f"{short(value)} stands in the data; refused")

        return walk(obj)


def _ints(values) -> bool:
    return isinstance(values, tuple) and all(type(v) is int for v in values)


def _numel(size: tuple) -> int:
    n = 1
    for d in size:
        n *= d
    return n


def _itemsize(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _ordered(args: tuple) -> OrderedDict:
    if not args:
        return OrderedDict()
    if len(args) == 1 and isinstance(args[0], list) and all(isinstance(p, (list, tuple)) and len(p) == 2
                                                             and isinstance(p[0], SCALARS) for p in args[0]):
        return OrderedDict(args[0])
    raise Refused("collections.OrderedDict applied to arguments that are not (key, value) pairs")


# ---------------------------------------------------------------------------- containers
def read_torch_file(path, mmap: bool = True):
    """A torch checkpoint's object, read as data (module docstring). CheckpointError on any refusal."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            head = f.read(512)
            if head[:4] == b"PK\x03\x04":
                kind = "zip"
            elif head[:1] == b"\x80":
                if is_tar_header(head):
                    raise CheckpointError(path, "a tar archive (torch's pre-1.0 format, extracted with tarfile by "
                                                "torch.load): refused")
                kind = "legacy"
            else:
                raise CheckpointError(path, "unknown format (neither a torch checkpoint, safetensors, nor a directory)")
            if not head:
                raise CheckpointError(path, "an empty file")
            buf = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY)
    except OSError as err:
        raise CheckpointError(path, f"cannot be read: {err.strerror or err}") from None
    reading = _Reading(path, buf, copy=not mmap, kind="zip" if kind == "zip" else "legacy (pre-1.6)")
    obj = _read_zip(reading) if kind == "zip" else _read_legacy(reading)
    reading.check_overlaps()
    return reading.finish(obj)


def is_tar_header(block: bytes) -> bool:
    """True when `block` (a file's first 512 bytes) has a valid ustar/v7 header checksum."""
    if len(block) < 512:
        return False
    field = block[148:156].replace(b"\x00", b" ").strip()
    try:
        declared = int(field, 8) if field else -1
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    signed = sum(struct.unpack("148b", block[:148])) + 8 * 32 + sum(struct.unpack("356b", block[156:512]))
    return declared in (unsigned, signed)


def _read_zip(reading: _Reading):
    path, size = reading.path, len(reading.buf)
    try:  # the mapping, not the path again: the path may name another file by now
        reading.buf.seek(0)
        with zipfile.ZipFile(reading.buf) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as err:
        raise CheckpointError(path, f"unreadable checkpoint (truncated or corrupt zip?): {str(err)[:200]}") from None
    pickles = [i for i in infos if i.filename.endswith("/data.pkl")]
    if any(i.filename.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in i.filename for i in infos):
        raise CheckpointError(path, "a TorchScript archive (constants.pkl, code/): loading it runs code; refused")
    if len(pickles) != 1:
        raise CheckpointError(path, "a zip without exactly one data.pkl: not a torch checkpoint")
    prefix = pickles[0].filename[: -len("data.pkl")]
    records, spans = {}, []
    for info in infos:
        name = info.filename
        if not name.startswith(prefix) or not _RECORD.fullmatch(name[len(prefix):]) or name in records:
            raise CheckpointError(path, f"zip member {short(name)} is not one of torch's records; refused")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointError(path, f"zip member {short(name)} is compressed (torch writes none); refused")
        start = _data_offset(reading.buf, info, path)
        if start + info.file_size > size:
            raise CheckpointError(path, f"zip member {short(name)} runs past the end of the file (truncated?)")
        records[name] = (start, info.file_size)
        spans.append((start, start + info.file_size))
    spans.sort()
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise CheckpointError(path, "zip records overlap one another; refused")
    order = records.get(prefix + "byteorder")
    if order and bytes(reading.buf[order[0]: order[0] + order[1]]) != b"little":
        raise CheckpointError(path, "a big-endian checkpoint: only little-endian files are read")
    start, length = records[prefix + "data.pkl"]
    obj, _ = reading.unpickle(start, start + length)
    for key, st in reading.storages.items():
        where = records.get(f"{prefix}data/{key}")
        if where is None:
            raise CheckpointError(path, f"storage {short(key)} is used but has no record in the zip")
        if where[1] < st.numel * _itemsize(st.dtype):
            raise CheckpointError(path, f"storage {short(key)} declares {st.numel:,} values; its record holds "
                                        f"{where[1]:,} bytes")
        st.offset = where[0]
    return obj


def _data_offset(buf, info: zipfile.ZipInfo, path: Path) -> int:
    """Where a stored member's bytes start: after its local header (whose name must match)."""
    at = info.header_offset
    head = bytes(buf[at: at + 30])
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise CheckpointError(path, f"zip member {short(info.filename)} has no local header (corrupt zip)")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    if bytes(buf[at + 30: at + 30 + name_len]) != info.filename.encode("utf-8"):
        raise CheckpointError(path, f"zip member {short(info.filename)}: local and central names differ; refused")
    return at + 30 + name_len + extra_len


def _read_legacy(reading: _Reading):
    path, buf = reading.path, reading.buf
    magic, pos = reading.unpickle(0, persistent=False)
    if magic != LEGACY_MAGIC:
        raise CheckpointError(path, "a pickle that is not a torch checkpoint (no torch magic number)")
    protocol, pos = reading.unpickle(pos, persistent=False)
    info, pos = reading.unpickle(pos, persistent=False)
    if protocol != LEGACY_PROTOCOL or not isinstance(info, dict):
        raise CheckpointError(path, f"torch legacy protocol {short(protocol)}: only {LEGACY_PROTOCOL} is read")
    if info.get("little_endian") is not True:
        raise CheckpointError(path, "a big-endian checkpoint: only little-endian files are read")
    obj, pos = reading.unpickle(pos)
    keys, pos = reading.unpickle(pos, persistent=False)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise CheckpointError(path, "its list of storage keys is not a list of distinct strings (corrupt?)")
    for key in keys:
        st = reading.storages.get(key)
        if st is None:
            raise CheckpointError(path, f"stores storage {short(key)}, which no tensor uses (corrupt?)")
        if pos + 8 > len(buf) or int.from_bytes(buf[pos: pos + 8], "little") != st.numel:
            raise CheckpointError(path, f"storage {short(key)}: its stored size is not the declared "
                                        f"{st.numel:,} values (truncated or corrupt?)")
        st.offset, pos = pos + 8, pos + 8 + st.numel * _itemsize(st.dtype)
        if pos > len(buf):
            raise CheckpointError(path, f"storage {short(key)} runs past the end of the file (truncated?)")
    return obj
