"""Values for s3prl's ``-o``: every one we build is a Python literal that s3prl's parser keeps whole.

s3prl 0.4.18 (``s3prl/utility/helper.py``, ``override``) splits the ``-o``
string on ``,,``, splits each item with ``option.split('=')`` (on *every*
``=``: an item holding two is a ValueError) and ``eval()``s the value, falling
back to the raw text when eval raises. A path pasted in as is therefore runs
code (``x,,config.y=__import__('os').system(...)#``), breaks the run
(``runs/lr=1e-4``), or becomes another value (``[1]``, ``None``).

:func:`s3prl_literal` writes a string as a single-quoted Python literal in
which every ASCII character outside a small safe set, ``=``, ``,``, quotes,
backslashes and control characters included, is a ``\\xHH`` escape: s3prl's
splits find no ``,,`` and no ``=`` in it, and ``eval`` gives the string back
exactly. A string that is not valid text (lone surrogates: a file name that is
not UTF-8) is refused. ``scripts/run_superb.sh`` has the same function in bash
(``s3prl_str``); ``tests/test_run_superb_script.py`` checks that both give
literals s3prl's own ``override`` reads back unchanged. No torch here.
"""

from __future__ import annotations

import math
import re

SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+:@%~-")
KEY = re.compile(r"(args|config)(\.[A-Za-z_][A-Za-z0-9_]*)+")


class OverrideValueError(ValueError):
    """A value that cannot be handed to s3prl's ``-o`` whole."""


def s3prl_literal(value: str) -> str:
    """``value`` as a Python string literal that survives s3prl's ``-o`` splitting and ``eval``."""
    if not isinstance(value, str):
        raise OverrideValueError(f"-o value {value!r} is not a string")
    out = ["'"]
    for char in value:
        code = ord(char)
        if char in SAFE:
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise OverrideValueError(f"-o value {value!r} is not valid UTF-8 text; rename it")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\U{code:08x}")
    out.append("'")
    return "".join(out)


def override_item(key: str, value) -> str:
    """One ``key=value`` item: ``key`` a dotted ``args.*``/``config.*`` name, ``value`` a str
    (quoted by :func:`s3prl_literal`), an int, a finite float or a bool."""
    if not KEY.fullmatch(key):
        raise OverrideValueError(f"-o key {key!r} is not args.NAME or config.NAME[.NAME...]")
    if isinstance(value, str):
        return f"{key}={s3prl_literal(value)}"
    if isinstance(value, bool) or isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return f"{key}={value!r}"
    raise OverrideValueError(f"-o value {value!r} for {key} is not a string, an integer, a finite float or a bool")


def join_items(items) -> str:
    """s3prl's ``key=value,,key=value``; empty items are left out."""
    return ",,".join(item for item in items if item)
