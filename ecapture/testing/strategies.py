"""Hypothesis strategies derived from construct declarations: every fixed field gets values
of its own type and range, a variable-length tail gets bytes whose length the struct's
length field states."""

from __future__ import annotations

from typing import Any

import construct as cs
from hypothesis import strategies as st

from ecapture.structs.layout import _describe, _unwrap

_INT_RANGES = {
    "B": (0, 2**8 - 1), "H": (0, 2**16 - 1), "I": (0, 2**32 - 1), "Q": (0, 2**64 - 1),
    "b": (-(2**7), 2**7 - 1), "h": (-(2**15), 2**15 - 1), "i": (-(2**31), 2**31 - 1),
    "q": (-(2**63), 2**63 - 1), "L": (0, 2**32 - 1), "l": (-(2**31), 2**31 - 1),
}


def field_strategy(sub: Any) -> st.SearchStrategy[Any]:
    sub = _unwrap(sub)
    if isinstance(sub, cs.FormatField):
        lo, hi = _INT_RANGES[sub.fmtstr[1:]]
        return st.integers(lo, hi)
    if isinstance(sub, cs.Bytes) and isinstance(sub.length, int):
        return st.binary(min_size=sub.length, max_size=sub.length)
    raise TypeError(f"no strategy for {type(sub).__name__}")


def struct_values(decl: cs.Struct, max_tail: int = 256,
                  **fixed: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Field dicts for ``decl``. A variable tail named T with length field ``T_len`` (e.g.
    data/data_len) gets bytes of exactly that length. ``fixed`` pins fields."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for sub in decl.subcons:
            _, size, _ = _describe(sub)
            if size is None:
                tail = draw(st.binary(max_size=max_tail))
                values[sub.name] = tail
                values[f"{sub.name}_len"] = len(tail)
            elif sub.name in fixed:
                values[sub.name] = fixed[sub.name]
            else:
                values[sub.name] = draw(field_strategy(sub))
        return values

    return build()



def event_bytes(decl: cs.Struct, max_tail: int = 256, **fixed: Any) -> st.SearchStrategy[bytes]:
    """Raw bytes of one event of ``decl``, as the kernel would send it (header plus the tail
    its length field states); ``fixed`` pins fields, e.g. ``kind=5``."""
    return struct_values(decl, max_tail, **fixed).map(lambda v: bytes(decl.build(v)))


def module_events(module_cls: Any, max_tail: int = 256) -> st.SearchStrategy[tuple[str, bytes]]:
    """(map name, raw bytes) of any struct on any map of a module, with its kind pinned:
    what a module's ``decode`` must take without raising anything but DecodeError."""
    def tagged(map_name: str, decl: cs.Struct, kind: int) -> st.SearchStrategy[tuple[str, bytes]]:
        return st.tuples(st.just(map_name), event_bytes(decl, max_tail, kind=kind))

    return st.one_of([tagged(m.name, ks.decl, kind)
                      for m in module_cls.maps for kind, ks in m.structs.items()])
