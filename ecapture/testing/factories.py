"""Build one raw event from its construct declaration, for tests that need a specific event
rather than a random one (see :mod:`ecapture.testing.strategies` for those).

Every field not given is zero (numbers) or NUL bytes (fixed arrays); fixed arrays given
shorter are NUL-padded, as C strings are (``comm=b"bash"``); a variable tail ``T`` given as
bytes sets ``T_len`` unless that is given too.
"""

from __future__ import annotations

from typing import Any

import construct as cs

from ecapture.structs.layout import layout


def make_event(decl: cs.Struct, **fields: Any) -> bytes:
    unknown = set(fields) - {f.name for f in layout(decl)}
    if unknown:
        raise TypeError(f"no such fields: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for f in layout(decl):
        given = fields.get(f.name)
        if f.size is None:  # the variable tail
            tail = given if given is not None else b""
            values[f.name] = tail
            if fields.get(f"{f.name}_len") is None:  # its length field came earlier
                values[f"{f.name}_len"] = len(tail)
        elif f.kind.startswith("bytes["):
            raw = given if given is not None else b""
            if len(raw) > f.size:
                raise ValueError(f"{f.name}: {len(raw)} bytes do not fit in {f.size}")
            values[f.name] = raw.ljust(f.size, b"\0")
        else:
            values[f.name] = given if given is not None else 0
    return bytes(decl.build(values))
