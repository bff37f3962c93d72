"""Where a PostgreSQL server keeps a portal's source text, and which servers are known.

``PortalData`` (src/include/utils/portal.h) begins with ``name`` and ``prepStmtName`` at 0
and 8 in every release since 8.x; ``sourceText`` follows the bookkeeping members, and moved
from 48 to 56 when PostgreSQL 14 inserted ``int createLevel`` before it (the stable branches
11 to 13 got that member at the end of the struct, to keep their ABI). The offset is read
from the server's own code first: the exported ``PortalDefineQuery(portal, prepStmtName,
sourceText, ...)`` stores its third argument into the portal, so the store's displacement
is the offset in that very build. The table below is the fallback for code that does not
look as expected, and the list of major versions whose functions this module knows
(``pg_parse_query(const char *)``, ``PortalRun(Portal, long, bool isTopLevel, ...)`` and
``pq_getbyte(void)``, unchanged from 10 to 18). Pure: no I/O here.
"""

from __future__ import annotations

import re

#: PortalData.sourceText by major version
SOURCE_TEXT_OFFSET = {10: 48, 11: 48, 12: 48, 13: 48,
                      14: 56, 15: 56, 16: 56, 17: 56, 18: 56}

#: the version string every server carries in .rodata (``SELECT version()``): "PostgreSQL
#: 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu, ..." or "PostgreSQL 18beta1 on ..."
VERSION_PATTERN = rb"PostgreSQL (\d+(?:\.\d+)+|\d+(?:devel|beta\d+|rc\d+))[ (]"

# The store of the third argument through the first: x86-64 "mov qword ptr [rdi + 0x38],
# rdx" (capstone's Intel syntax), arm64 "str x2, [x0, #0x38]".
_STORES = {"x86_64": ("mov", re.compile(r"qword ptr \[rdi \+ (0x[0-9a-f]+|\d+)\], rdx")),
           "arm64": ("str", re.compile(r"x2, \[x0, #(0x[0-9a-f]+|\d+)\]"))}


_ARM64_BRANCHES = frozenset({"b", "bl", "br", "blr", "ret", "cbz", "cbnz", "tbz", "tbnz"})


def _branches(mnemonic: str, arch: str) -> bool:
    if arch == "x86_64":
        return mnemonic.startswith("j") or mnemonic in ("call", "ret")
    return mnemonic in _ARM64_BRANCHES or mnemonic.startswith("b.")


def major_version(version: str) -> int | None:
    """'15.18' -> 15, '18beta1' -> 18, '9.6.24' -> None (before 10 the major had two parts,
    and those servers are not supported)."""
    m = re.match(r"(\d+)", version)
    if m is None:
        return None
    major = int(m.group(1))
    return major if major >= 10 else None


def source_text_store(instructions: list[tuple[str, str]], arch: str) -> int | None:
    """The displacement of PortalDefineQuery()'s store of ``sourceText`` (its third
    argument) into the portal (its first), from the function's disassembly as (mnemonic,
    operands) pairs; None when no such store is there (other code, other compiler). Only
    the stores before the first branch or call count: the argument registers are still
    the arguments there."""
    entry = _STORES.get(arch)
    if entry is None:
        return None
    mnemonic, operands = entry
    for mn, ops in instructions:
        if _branches(mn, arch):
            return None
        if mn == mnemonic and (m := operands.fullmatch(ops)):
            return int(m.group(1), 0)
    return None

