"""A pickle interpreter of our own that builds data and never calls anything a file names.

    obj, end = PickleReader(buf, start, names, persistent).load()

Python's unpickler, restricted or not, calls what a file names: `find_class`'s
result with REDUCE, `__setstate__` or `setattr` with BUILD, `append`/`extend` and
`__setitem__` of whatever object is on the stack. This reader implements the
binary opcodes (protocols 2 to 5) itself, and each of them only builds plain
values of its own (dict, OrderedDict, list, tuple, set, str, bytes, int, float,
bool, None):

- GLOBAL/STACK_GLOBAL look the name up in `names` (a mapping to `Name` tokens of
  ours); an unknown name is refused. A token is a constant, never a callable.
- REDUCE, NEWOBJ and NEWOBJ_EX are applied by `apply` to the tokens that may be
  applied (ordered dicts, tensor rebuilds, records, ...), with their arguments
  checked; anything else is refused.
- BUILD sets the state of a `Record` this reader made, once; on an OrderedDict of
  this reader (a state dict's `_metadata`) its state is dropped; on anything else
  it is refused. No attribute of any object is set from a file.
- APPEND(S)/SETITEM(S)/ADDITEMS act on this reader's own lists, dicts and sets
  only (exact types); dict keys and set members must be plain scalars, so hashing
  one costs at most its length.
- BINPERSID hands the pid tuple to `persistent` (torch_files: storages only).
- Text opcodes of protocols 0 and 1 (INST, OBJ, PERSID, GET, PUT, ...), extension
  codes and out-of-band buffers are refused.

The work is bounded by the stream: each opcode consumes at least one byte, the
number of opcodes is capped, a length field never reads past the stream, and the
MARK nesting is capped. Shared values (memo) are not expanded here: the walk that
turns the result into plain data (torch_files.finish) counts every visit.
Errors are `Refused` with a message that quotes at most a short, cleaned excerpt
of what the file holds.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

MAX_OPS = 20_000_000      # opcodes in one pickle (a WavLM Large state dict: ~10,000)
MAX_MARKS = 1_000         # MARK nesting
MAX_INT_BYTES = 64        # LONG1/LONG4: a number of 512 bits at most
SCALARS = (str, bytes, int, float, bool, type(None))


class Refused(Exception):
    """The pickle holds something this reader does not build; the message says what."""


def short(value, limit: int = 80) -> str:
    """A value of the file in a message: its type for containers, a cleaned excerpt for scalars."""
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        text = value if isinstance(value, str) else repr(value)[:limit] if not isinstance(value, int) else (
            str(value) if abs(value) < 10 ** 30 else "a large integer")
        text = "".join(c if c.isprintable() else "?" for c in text[:limit])
        return text + ("..." if len(text) >= limit else "")
    return f"a {type(value).__name__}"


class Name:
    """A global the file may name: `kind` says what applying it builds (or that it is a constant)."""

    __slots__ = ("kind", "dotted", "extra")

    def __init__(self, kind: str, dotted: str, extra=None):
        self.kind, self.dotted, self.extra = kind, dotted, extra


class Record:
    """A stand-in for an object of an admitted class: the state BUILD gives it, set once."""

    __slots__ = ("kind", "state", "built")

    def __init__(self, kind: str):
        self.kind, self.state, self.built = kind, None, False


class _Mark:
    __slots__ = ()


_MARK = _Mark()


class PickleReader:
    """One pickle from `buf[start:]`; `load()` returns (value, position after STOP)."""

    def __init__(self, buf, start: int, names: dict, persistent=None, apply=None, max_ops: int = MAX_OPS):
        self.buf, self.pos, self.names = memoryview(buf).cast("B"), start, names
        self.persistent, self.apply = persistent, apply
        self.max_ops, self.ops = max_ops, 0
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict[int, object] = {}

    # ------------------------------------------------------------------ reading bytes
    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise Refused(f"a field of {n:,} bytes runs past the end of the data (truncated or corrupt)")
        chunk = self.buf[self.pos: self.pos + n]
        self.pos += n
        return chunk

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "little")

    def _line(self) -> str:
        end = bytes(self.buf[self.pos: self.pos + 256]).find(b"\n")
        if end < 0:
            raise Refused("a GLOBAL name longer than 255 bytes or without its end")
        text = bytes(self._take(end + 1)[:-1])
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise Refused("a GLOBAL name that is not ASCII") from None

    # ------------------------------------------------------------------ the stack
    def _pop(self):
        if not self.stack:
            raise Refused("an opcode finds the stack empty (corrupt pickle)")
        return self.stack.pop()

    def _pop_mark(self) -> list:
        if not self.marks:
            raise Refused("an opcode needs a MARK that is not there (corrupt pickle)")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def _top(self, kind):
        if not self.stack:
            raise Refused("an opcode finds the stack empty (corrupt pickle)")
        target = self.stack[-1]
        if type(target) not in kind:
            raise Refused(f"an opcode would add items to {short(target)}: only this reader's own containers take items")
        return target

    def _global(self, module: str, name: str):
        token = self.names.get((module, name))
        if token is None:
            raise Refused(f"refused global {short(module, 60)}.{short(name, 60)}")
        return token

    def _memo_get(self, index: int):
        if index not in self.memo:
            raise Refused(f"memo entry {index} read before it was written (corrupt pickle)")
        self.stack.append(self.memo[index])

    def _memo_put(self, index: int):
        if not self.stack:
            raise Refused("an opcode finds the stack empty (corrupt pickle)")
        self.memo[index] = self.stack[-1]

    # ------------------------------------------------------------------ the loop
    def load(self):
        handlers = _HANDLERS
        while True:
            self.ops += 1
            if self.ops > self.max_ops:
                raise Refused(f"more than {self.max_ops:,} pickle opcodes: refused as a denial of service")
            code = self._take(1)[0]
            handler = handlers.get(code)
            if handler is None:
                raise Refused(f"pickle opcode {bytes([code])!r} is not read (only protocols 2 to 5 without "
                              "extensions or out-of-band buffers)")
            if handler is _stop:
                if len(self.stack) != 1 or self.marks:
                    raise Refused("STOP with a stack that does not hold exactly one value (corrupt pickle)")
                return self.stack[0], self.pos
            handler(self)


def plain_key(value):
    """`value` if it may be a dict key or a set member: a plain scalar, whose hash costs at most its length."""
    if not isinstance(value, SCALARS):
        raise Refused(f"a dict key or set member that is {short(value)}: only plain values are read")
    return value


def _setitems(self, items: list):
    target = self._top((dict, OrderedDict))
    if len(items) % 2:
        raise Refused("SETITEMS with an odd number of items (corrupt pickle)")
    for i in range(0, len(items), 2):
        target[plain_key(items[i])] = items[i + 1]


def _string(self, n: int, encoding: str):
    raw = bytes(self._take(n))
    try:
        self.stack.append(raw.decode(encoding, "surrogatepass") if encoding == "utf-8" else raw.decode(encoding))
    except UnicodeDecodeError:
        raise Refused("a string that is not valid UTF-8 (corrupt pickle)") from None


def _long(self, n: int):
    if n > MAX_INT_BYTES:
        raise Refused(f"an integer of {n:,} bytes (at most {MAX_INT_BYTES})")
    self.stack.append(int.from_bytes(self._take(n), "little", signed=True))


def _apply(self, kind: str):
    args = self._pop()
    if kind == "NEWOBJ_EX":
        kwargs, args = args, self._pop()
        if kwargs:
            raise Refused("NEWOBJ_EX with keyword arguments")
    target = self._pop()
    if not isinstance(target, Name) or self.apply is None:
        raise Refused(f"{kind} applied to {short(target)}: only admitted names are applied")
    if not isinstance(args, tuple):
        raise Refused(f"{kind} with arguments that are {short(args)}, not a tuple")
    self.stack.append(self.apply(kind, target, args))


def _build(self):
    state = self._pop()
    target = self._pop() if self.stack else None
    if type(target) is OrderedDict and isinstance(state, dict):
        # torch's state dicts carry `_metadata` (module versions) as instance state: dropped, never set
        self.stack.append(target)
        return
    if not isinstance(target, Record) or target.built:
        what = "a record built already" if isinstance(target, Record) else short(target)
        raise Refused(f"BUILD on {what}: state is only given to this reader's own records, once")
    target.state, target.built = state, True
    self.stack.append(target)


def _persid(self):
    pid = self._pop()
    if self.persistent is None:
        raise Refused("a persistent id where none is expected")
    self.stack.append(self.persistent(pid))


def _mark(self):
    if len(self.marks) >= MAX_MARKS:
        raise Refused(f"more than {MAX_MARKS} nested MARKs: refused as a denial of service")
    self.marks.append(self.stack)
    self.stack = []


def _push_marked(build):
    """An opcode that builds one value from the items above the last MARK (the stack is
    switched by _pop_mark, so the push must come after it)."""
    def handler(self):
        value = build(self._pop_mark())
        self.stack.append(value)
    return handler


_frozenset = _push_marked(lambda items: frozenset(plain_key(v) for v in items))


def _additems(self):
    items = self._pop_mark()
    target = self._top((set,))
    target.update(plain_key(v) for v in items)


def _dict(self):
    items = self._pop_mark()
    self.stack.append({})
    _setitems(self, items)


def _stop(self):  # handled in load()
    pass


def _proto(self):
    if self._take(1)[0] > 5:
        raise Refused("a pickle protocol above 5")


def _tuple_n(n: int):
    def handler(self):
        if len(self.stack) < n:
            raise Refused("an opcode finds the stack empty (corrupt pickle)")
        items = tuple(self.stack[len(self.stack) - n:])
        del self.stack[len(self.stack) - n:]
        self.stack.append(items)
    return handler


def _append(self):
    value = self._pop()
    self._top((list,)).append(value)


def _appends(self):
    items = self._pop_mark()
    self._top((list,)).extend(items)


def _setitem(self):
    value, key = self._pop(), self._pop()
    _setitems(self, [key, value])


def _stack_global(self):
    name, module = self._pop(), self._pop()
    if not isinstance(name, str) or not isinstance(module, str):
        raise Refused("STACK_GLOBAL with names that are not strings")
    self.stack.append(self._global(module, name))


def _pop_op(self):
    if self.stack:
        self.stack.pop()
    else:
        self._pop_mark()


def _dup(self):
    if not self.stack:
        raise Refused("an opcode finds the stack empty (corrupt pickle)")
    self.stack.append(self.stack[-1])


def _frame(self):
    self._take(8)  # a frame's length: the opcodes inside are read as they come


_HANDLERS = {
    0x80: _proto,
    0x95: _frame,
    ord("."): _stop,
    ord("("): _mark,
    ord("0"): _pop_op,
    ord("1"): lambda self: self._pop_mark(),
    ord("2"): _dup,
    ord("N"): lambda self: self.stack.append(None),
    0x88: lambda self: self.stack.append(True),
    0x89: lambda self: self.stack.append(False),
    ord("J"): lambda self: self.stack.append(struct.unpack("<i", self._take(4))[0]),
    ord("K"): lambda self: self.stack.append(self._uint(1)),
    ord("M"): lambda self: self.stack.append(self._uint(2)),
    0x8A: lambda self: _long(self, self._uint(1)),
    0x8B: lambda self: _long(self, struct.unpack("<i", self._take(4))[0]),
    ord("G"): lambda self: self.stack.append(struct.unpack(">d", self._take(8))[0]),
    ord("X"): lambda self: _string(self, self._uint(4), "utf-8"),
    0x8C: lambda self: _string(self, self._uint(1), "utf-8"),
    0x8D: lambda self: _string(self, self._uint(8), "utf-8"),
    ord("T"): lambda self: _string(self, struct.unpack("<i", self._take(4))[0], "latin-1"),
    ord("U"): lambda self: _string(self, self._uint(1), "latin-1"),
    ord("B"): lambda self: self.stack.append(bytes(self._take(self._uint(4)))),
    ord("C"): lambda self: self.stack.append(bytes(self._take(self._uint(1)))),
    0x8E: lambda self: self.stack.append(bytes(self._take(self._uint(8)))),
    ord("]"): lambda self: self.stack.append([]),
    ord("a"): _append,
    ord("e"): _appends,
    ord("l"): _push_marked(list),
    ord(")"): lambda self: self.stack.append(()),
    ord("t"): _push_marked(tuple),
    0x85: _tuple_n(1),
    0x86: _tuple_n(2),
    0x87: _tuple_n(3),
    ord("}"): lambda self: self.stack.append({}),
    ord("d"): _dict,
    ord("s"): _setitem,
    ord("u"): lambda self: _setitems(self, self._pop_mark()),
    0x8F: lambda self: self.stack.append(set()),
    0x90: _additems,
    0x91: _frozenset,
    ord("c"): lambda self: self.stack.append(self._global(self._line(), self._line())),
    0x93: _stack_global,
    ord("R"): lambda self: _apply(self, "REDUCE"),
    0x81: lambda self: _apply(self, "NEWOBJ"),
    0x92: lambda self: _apply(self, "NEWOBJ_EX"),
    ord("b"): _build,
    ord("q"): lambda self: self._memo_put(self._uint(1)),
    ord("r"): lambda self: self._memo_put(self._uint(4)),
    0x94: lambda self: self._memo_put(len(self.memo)),
    ord("h"): lambda self: self._memo_get(self._uint(1)),
    ord("j"): lambda self: self._memo_get(self._uint(4)),
    ord("Q"): _persid,
}
