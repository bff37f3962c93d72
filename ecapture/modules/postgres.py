"""The ``postgres`` module: the statements PostgreSQL backends run, from both protocols.

Kernel side: kern/postgres.c, on exported functions only (Debian's server is stripped, and
``exec_simple_query`` is static): a uretprobe on ``pq_getbyte`` tells which protocol message
a backend is handling, a uprobe on ``pg_parse_query`` sends the SQL text of a Query ('Q') or
Parse ('P') message, and a uprobe on ``PortalRun`` sends each top-level Execute of the
extended protocol with its prepared statement's name and text. Events: ``pg_parse_event_t``
and ``pg_execute_event_t`` on one ring buffer (perf buffer on old kernels), in order.

Every event is complete when it arrives, so nothing is held back: a query that fails to
parse is shown as promptly as one that runs.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from elftools.common.exceptions import ELFError

from ecapture.errors import AttachError, DecodeError
from ecapture.events import Event, comm_str, one_line
from ecapture.modules.base import (
    Decoded,
    EventMap,
    Features,
    Module,
    Option,
    Probe,
    Target,
    check_path_and_pid,
    pid_option,
    split_kind,
    uid_option,
    unpack_event,
)
from ecapture.modules.postgres_offsets import (
    SOURCE_TEXT_OFFSET,
    VERSION_PATTERN,
    major_version,
    source_text_store,
)
from ecapture.structs.postgres import (
    EVENT_PG_ERROR,
    EVENT_PG_EXECUTE,
    EVENT_PG_PARSE,
    PG_ERROR,
    PG_ERROR_MAX,
    PG_EXECUTE,
    PG_PARSE,
    PG_TEXT_MAX,
)
from ecapture.targets import build_id, disassembler, elf_symbols, function_code, scan_version

PARSE = "pg_parse_query"
RUN = "PortalRun"
GETBYTE = "pq_getbyte"
ENDMESSAGE = "pq_endmessage"
DEFINE = "PortalDefineQuery"  # read, not probed: where the portal keeps its text
REQUIRED = (PARSE, RUN, GETBYTE, ENDMESSAGE, DEFINE)

#: where distributions install the server, newest first within each pattern: Debian and
#: Ubuntu, the PGDG RPMs, a source build's default prefix, Fedora's and Arch's /usr/bin
SEARCH = ("/usr/lib/postgresql/*/bin/postgres", "/usr/pgsql-*/bin/postgres",
          "/usr/local/pgsql/bin/postgres", "/usr/bin/postgres")

#: a task's parent and its tgid, for --pid (KOFF_TASK_REAL_PARENT, KOFF_TASK_TGID)
PARENT_MEMBERS = (("TASK_REAL_PARENT", "task_struct", "real_parent"),
                  ("TASK_TGID", "task_struct", "tgid"))

#: what a parse event was, by the protocol message it parsed
ACTIONS = {ord("Q"): "query", ord("P"): "parse"}


@dataclass(slots=True)
class PgStatement(Event):
    """A statement a backend was asked to run. ``action`` says how it came:

    - ``query``: a simple-protocol Query message, its whole text (several statements
      separated by ';' arrive as one, as the server's log shows them);
    - ``parse``: an extended-protocol Parse message (its Executes follow as ``execute``);
    - ``execute``: an extended-protocol Execute of prepared statement ``statement`` (""
      for the unnamed one) through portal ``portal`` ("" for the unnamed one), with the
      statement's text;
    - ``nested``: a parse within a message that already had one (a SQL function's body);
    - ``statement``: a parse whose protocol message is unknown (the backend was already
      waiting for it when the capture started).

    Its tid is the backend's pid: a backend is one single-threaded process."""

    action: str
    statement: str
    portal: str
    query: bytes
    truncated: bool

    json_type: ClassVar[str] = "postgres"

    def label(self) -> str:
        if self.action != "execute":
            return self.action
        # As the server's log names it (postgres.c, exec_execute_message).
        portal = f"/{self.portal}" if self.portal else ""
        return f"execute {self.statement or '<unnamed>'}{portal}"

    def text_line(self) -> str:
        cut = f"  (cut at {len(self.query)} bytes)" if self.truncated else ""
        return (f"{self.comm} pid {self.pid} uid {self.uid}  {self.label()}: "
                f"{one_line(self.query)}{cut}")

    def json_fields(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "comm": self.comm, "action": self.action,
                "statement": self.statement, "portal": self.portal, "query": self.query,
                "truncated": self.truncated}


def error_fields(body: bytes) -> dict[str, str]:
    """An ErrorResponse's fields by type letter (protocol-error-fields.html): each a type
    byte and a NUL-terminated string, a NUL type byte ending the list. A body cut short
    keeps its last field's beginning."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(body) and body[at]:
        end = body.find(b"\0", at + 1)
        value = body[at + 1:] if end < 0 else body[at + 1:end]
        fields[chr(body[at])] = value.decode("utf-8", "backslashreplace")
        if end < 0:
            break
        at = end + 1
    return fields


@dataclass(slots=True)
class PgError(Event):
    """An error a backend sent its client: the statement shown just before from the same
    pid failed (or, with no statement, the connection: a FATAL at login). ``severity`` is
    ERROR, FATAL or PANIC; ``position`` is the 1-based character of the statement where
    the error was found, when the server says."""

    severity: str
    sqlstate: str
    message: str
    detail: str | None
    hint: str | None
    position: int | None
    truncated: bool

    json_type: ClassVar[str] = "postgres_error"

    def text_line(self) -> str:
        at = f" (at character {self.position})" if self.position is not None else ""
        cut = "  (cut)" if self.truncated else ""
        return (f"{self.comm} pid {self.pid} uid {self.uid}  {self.severity} {self.sqlstate}: "
                f"{one_line(self.message.encode())}{at}{cut}")

    def json_fields(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "comm": self.comm, "severity": self.severity,
                "sqlstate": self.sqlstate, "message": self.message, "detail": self.detail,
                "hint": self.hint, "position": self.position, "truncated": self.truncated}


@dataclass(slots=True)
class PgCutCount(Event):
    """At the end of a capture: how many statements were longer than the kernel sends."""

    count: int

    json_type: ClassVar[str] = "postgres_cut"
    filtered: ClassVar[bool] = False
    kernel_time: ClassVar[bool] = False

    def text_line(self) -> str:
        return (f"postgres: {self.count} statement(s) longer than {PG_TEXT_MAX - 1} bytes "
                "were cut")

    def json_fields(self) -> dict[str, Any]:
        return {"count": self.count, "limit": PG_TEXT_MAX - 1}


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def default_server() -> str | None:
    """The newest server of the usual install places, else ``postgres`` on PATH."""
    for pattern in SEARCH:
        found = sorted(glob.glob(pattern), key=_version_key, reverse=True)
        if found:
            return found[0]
    return shutil.which("postgres")


def code_source_text_offset(path: str) -> int | None:
    """PortalData.sourceText's offset as this build's PortalDefineQuery() stores it; None
    when its code cannot be read that way (see postgres_offsets)."""
    try:
        found = function_code(path, DEFINE, 256)
    except (OSError, ELFError):
        return None
    arch = {"EM_X86_64": "x86_64", "EM_AARCH64": "arm64"}.get(found[2]) if found else None
    if found is None or arch is None:
        return None
    code, start, machine = found
    insns = [(i[2], i[3]) for i in disassembler(machine).disasm_lite(code, start)]
    return source_text_store(insns, arch)


class PostgresModule(Module):
    name = "postgres"
    aliases = ("postgresql", "pg")
    help = "capture the statements PostgreSQL backends run (simple and extended protocol)"
    source = "postgres.c"
    header = "postgres.h"
    options = (
        Option(("--postgres",), "postgres", "the server binary to attach to (default: "
               "the newest of /usr/lib/postgresql/*/bin/postgres, /usr/pgsql-*/bin/postgres, "
               "..., else postgres on PATH)", metavar="PATH"),
        pid_option("capture only this process and the processes it started: a backend, or "
                   "the postmaster for all its backends (the binary is that process's)"),
        uid_option(),
    )
    maps = (EventMap("events", {EVENT_PG_PARSE: PG_PARSE, EVENT_PG_EXECUTE: PG_EXECUTE,
                                EVENT_PG_ERROR: PG_ERROR}),)

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.binary: str | None = None
        self.source_text_offset: int | None = None
        codecs = self.maps[0].codecs()
        self._parse = codecs[EVENT_PG_PARSE]
        self._execute = codecs[EVENT_PG_EXECUTE]
        self._error = codecs[EVENT_PG_ERROR]
        self.cut = 0  # statements longer than the kernel sends
        self._last_cut_ns = 0

    # -- configuration -------------------------------------------------------------
    def check(self) -> None:
        self.notes += check_path_and_pid(self.config, "postgres")

    def _locate(self) -> str:
        path = self.config.get("postgres")
        pid = self.config.get("pid")
        if not path and pid is not None:
            exe = f"/proc/{pid}/exe"
            try:
                target = os.readlink(exe)
            except OSError as e:
                raise AttachError(f"--pid {pid}: cannot read its executable ({e.strerror})"
                                  ) from None
            # A server upgraded under a running postmaster runs a deleted file ("...
            # (deleted)"), one in a container a file of another mount namespace: the link
            # itself leads the kernel to the very file the process runs.
            return target if os.path.isfile(target) else exe
        path = path or default_server()
        if path is None:
            raise AttachError("PostgreSQL server not found: install it, or pass "
                              "--postgres PATH (the postgres binary)")
        return os.path.realpath(path)

    def init(self) -> None:
        path = self._locate()
        missing = [s for s in REQUIRED if s not in elf_symbols(path)]
        if missing:
            what = ", ".join(f"{s}()" for s in missing)
            if self.config.get("pid") is not None and not self.config.get("postgres"):
                raise AttachError(f"--pid {self.config['pid']} runs {path}, which does not "
                                  f"define {what}: not a PostgreSQL server process")
            raise AttachError(f"{path} does not define {what}: not a PostgreSQL server; pass "
                              "--postgres with the server binary (bin/postgres)")
        version = scan_version(path, VERSION_PATTERN)
        if version is None:
            raise AttachError(f"{path}: no PostgreSQL version string in it; pass --postgres "
                              "with the server binary (bin/postgres)")
        major = major_version(version)
        if major not in SOURCE_TEXT_OFFSET:
            known = f"{min(SOURCE_TEXT_OFFSET)} to {max(SOURCE_TEXT_OFFSET)}"
            raise AttachError(f"{path}: PostgreSQL {version} is not supported (known major "
                              f"versions: {known})")
        offset = code_source_text_offset(path)
        self.source_text_offset = offset if offset is not None else SOURCE_TEXT_OFFSET[major]
        self.binary = path
        self.targets = [Target(path, version, build_id(path))]

    # -- kernel side ---------------------------------------------------------------
    def probes(self, features: Features) -> list[Probe]:
        return [Probe("uretprobe", GETBYTE, "pg_getbyte_return", self.binary),
                Probe("uprobe", PARSE, "pg_parse_query_entry", self.binary),
                Probe("uprobe", RUN, "pg_portal_run_entry", self.binary),
                Probe("uprobe", ENDMESSAGE, "pg_endmessage_entry", self.binary)]

    def kernel_members(self) -> tuple[tuple[str, str, str], ...]:
        # --pid follows a process's children (a postmaster's backends) by their parent.
        return PARENT_MEMBERS if self.config.get("pid") is not None else ()

    def cflags(self, features: Features) -> list[str]:
        flags = [f"-DPG_SOURCE_TEXT_OFF={self.source_text_offset}"]
        if self.config.get("pid") is not None:
            if not all(name in features.kernel_offsets for name, _, _ in PARENT_MEMBERS):
                raise AttachError(f"--pid {self.config['pid']} needs the kernel's BTF "
                                  "(/sys/kernel/btf/vmlinux) to tell a process's children; "
                                  "run without --pid, or on a kernel built with BTF")
            flags.append(f"-DPG_PID={self.config['pid']}")
        if self.config.get("uid") is not None:
            flags.append(f"-DTARGET_UID={self.config['uid']}")
        return flags

    # -- user side -----------------------------------------------------------------
    def decode(self, map_name: str, data: bytes) -> PgStatement | PgError:
        kind = split_kind(data)
        if kind == EVENT_PG_ERROR:
            return self._decode_error(data)
        if kind == EVENT_PG_PARSE:
            codec, what = self._parse, "pg_parse_event_t"
        elif kind == EVENT_PG_EXECUTE:
            codec, what = self._execute, "pg_execute_event_t"
        else:
            raise DecodeError(f"unknown event kind {kind} on map {map_name}")
        f, text = unpack_event(codec, data, what, PG_TEXT_MAX - 1)
        if kind == EVENT_PG_PARSE:
            action = "nested" if f["nested"] else ACTIONS.get(f["msg_type"], "statement")
            statement = portal = ""
        else:
            action = "execute"
            statement, portal = comm_str(f["statement"]), comm_str(f["portal"])
        return PgStatement(timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["pid"],
                           uid=f["uid"], comm=comm_str(f["comm"]), action=action,
                           statement=statement, portal=portal, query=text,
                           truncated=bool(f["truncated"]))

    def _decode_error(self, data: bytes) -> PgError:
        f, body = unpack_event(self._error, data, "pg_error_event_t", PG_ERROR_MAX)
        fields = error_fields(body)
        position = fields.get("P", "")
        # 'V' (9.6+) is never translated; 'S' is in the server's lc_messages
        return PgError(timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["pid"],
                       uid=f["uid"], comm=comm_str(f["comm"]),
                       severity=fields.get("V") or fields.get("S") or "ERROR",
                       sqlstate=fields.get("C", "?????"), message=fields.get("M", ""),
                       detail=fields.get("D"), hint=fields.get("H"),
                       position=int(position) if position.isdigit() else None,
                       truncated=bool(f["truncated"]))

    def dispatch(self, decoded: Decoded) -> Iterator[Event]:
        if isinstance(decoded, PgStatement) and decoded.truncated:
            self.cut += 1
            self._last_cut_ns = decoded.timestamp_ns
        if isinstance(decoded, Event):
            yield decoded

    def finish(self) -> Iterator[Event]:
        if self.cut:  # at the time of the last one cut
            yield PgCutCount(timestamp_ns=self._last_cut_ns, pid=0, tid=0, uid=0, comm="",
                             count=self.cut)
