"""Typed events: what decoders produce, filters select and outputs write. Pure: no I/O here.

Every event is an :class:`Event`: a timestamp and the process it came from (pid, tid, uid,
comm), plus what its module declares. An event says how it looks (``text``, ``json``) and
which filters apply to it, so filters and outputs never need to know a module's classes.
The events shared by every TLS library live here too: connections, plaintext, key-log
entries and packets. A module with events of its own declares them in its own file.

Events are values: build them, never change them once they leave the module that builds
them (a module's dispatch may still finish one its decode began, e.g. attach a data event's
connection). They are not frozen only because frozen dataclasses cost a microsecond more
per event, and replay makes hundreds of thousands.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ecapture.render import MEMO_MAX, Style, json_bytes, json_str, json_text

AF_INET = 2
AF_INET6 = 10

TLS_VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv1.0", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
                0x0304: "TLSv1.3"}

# Which connection an event belongs to, for the --port and --host filters:
#   "connection": its own ``connection`` (None: unknown, so those filters drop it);
#   "unknown": it belongs to a connection whose endpoints it does not carry (TLS secrets,
#              packets): those filters let it through rather than lose it;
#   "none": it is not network traffic (a shell line): those filters drop it.
Network = Literal["connection", "unknown", "none"]


def comm_str(raw: bytes) -> str:
    """A kernel task comm: NUL-terminated inside 16 bytes; bytes after the NUL are garbage."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def one_line(data: bytes) -> str:
    """What a program read or sent, as text on one output line: UTF-8 where it is valid,
    backslash escapes for the rest and for control characters (the newlines of a command
    typed over several lines), never raw: one event, one line."""
    text = data.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def addr_str(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == AF_INET6:
        addr = ipaddress.IPv6Address(raw[:16])
        return str(addr.ipv4_mapped or addr)
    return "?"


@dataclass(slots=True)
class Event:
    """What every module's events carry. ``timestamp_ns`` is the kernel's CLOCK_MONOTONIC."""

    timestamp_ns: int
    pid: int
    tid: int
    uid: int
    comm: str

    json_type: ClassVar[str] = "event"
    #: --pid and --comm select it (False: it belongs to no process, e.g. a packet)
    process_scoped: ClassVar[bool] = True
    network: ClassVar[Network] = "none"
    #: False: every filter lets it through (reports about the capture itself)
    filtered: ClassVar[bool] = True
    #: False: its time is when user space learned of it, not a kernel event's time, so
    #: conversations pass it on at once instead of ordering it among kernel events
    kernel_time: ClassVar[bool] = True

    @property
    def connection(self) -> Conn | None:
        """The connection this event travelled on, when ``network`` is "connection"."""
        return None

    @property
    def where(self) -> Place | None:
        """Which container (mount namespace, cgroup) the process was in; None: not known
        (modules that do not look say nothing)."""
        return None

    def text(self, style: Style) -> str:
        """The text model: by default one line, the time then :meth:`text_line`; "" shows
        nothing (secrets and packets have models of their own)."""
        return f"{style.when(self.timestamp_ns)}  {self.text_line()}\n"

    def text_line(self) -> str:
        return repr(self)

    def json_fields(self) -> dict[str, Any] | None:
        """The json model's fields after "type", "time" and "ts_ns"; bytes values become
        text or base64. None: not shown in the json model."""
        return None

    def json(self, style: Style) -> dict[str, Any] | None:
        fields = self.json_fields()
        if fields is None:
            return None
        ts = self.timestamp_ns
        out: dict[str, Any] = {"type": self.json_type, "time": style.iso(ts), "ts_ns": ts}
        for key, value in fields.items():
            if isinstance(value, bytes):
                out.update(json_bytes(key, value))
            else:
                out[key] = value
        return out

    def json_line(self, style: Style) -> str | None:
        """The json model's line without its newline: :meth:`json` as JSON text
        (:data:`ecapture.render.json_text`). None: not shown in the json model. An event
        that comes by the hundred thousand may build the same text directly (and its tests
        check that it is the same)."""
        obj = self.json(style)
        return None if obj is None else json_text(obj)


@dataclass(slots=True)
class LostNotice(Event):
    """The kernel dropped ``count`` events of one map (buffer full). Its time is when user
    space learned of it; it belongs to no process."""

    module: str
    map_name: str
    count: int

    json_type: ClassVar[str] = "lost"
    process_scoped: ClassVar[bool] = False
    filtered: ClassVar[bool] = False
    kernel_time: ClassVar[bool] = False

    def text_line(self) -> str:
        return f"LOST {self.count} events on {self.module}/{self.map_name}"

    def json_fields(self) -> dict[str, Any]:
        return {"module": self.module, "map": self.map_name, "count": self.count}


@dataclass(frozen=True, slots=True)
class Place:
    """Where a process ran: its mount namespace and cgroup, and whether that namespace is
    the capturing ecapture's own (the host's, as a rule). A container is told by them."""

    mntns: int | None
    cgroup: str | None
    host: bool

    def label(self) -> str:
        """The text model's mark, after the process: "" on the host."""
        if self.host:
            return ""
        cgroup = f" cgroup {self.cgroup}" if self.cgroup not in (None, "", "/") else ""
        return f"  [mntns {self.mntns if self.mntns is not None else '?'}{cgroup}]"

    def fields(self) -> dict[str, Any]:
        return {"mntns": self.mntns, "cgroup": self.cgroup}


NO_PLACE = {"mntns": None, "cgroup": None}


def place_fields(place: Place | None) -> dict[str, Any]:
    """The json model's "mntns" and "cgroup": null where not known."""
    return NO_PLACE if place is None else place.fields()


def lost_notice(recv_ns: int, module: str, map_name: str, count: int) -> LostNotice:
    return LostNotice(recv_ns, 0, 0, 0, "", module, map_name, count)


class Fragment:
    """Part of an event, as one kernel record carries it (a chunk of a large call, a
    packet's piece, a library's raw secrets): a module's ``dispatch`` turns fragments into
    events. Never shown, never filtered."""

    __slots__ = ()


# -- the TLS family's events ------------------------------------------------------------

def _endpoint(addr: str, port: int) -> str | None:
    """"ADDR:PORT" ("[ADDR]:PORT" for IPv6); None when the address is not known."""
    if addr == "?":
        return None
    if ":" in addr:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


def shown(endpoint: str | None) -> str:
    """An endpoint in the text model: "?" where the json model says null."""
    return "?" if endpoint is None else endpoint


def endpoints(conn: Conn | None) -> dict[str, Any]:
    """"local" and "remote" of the json model; null where unknown."""
    if conn is None or conn.kind == "close":
        return {"local": None, "remote": None}
    return {"local": conn.local, "remote": conn.remote}


ConnKind = Literal["connect", "accept", "close", "proc"]


class OnConnection:
    """Mixin of the events that travelled on a connection, held in their ``conn`` field
    (None: unknown): the --port and --host filters select them by it."""

    __slots__ = ()
    conn: Conn | None
    network: ClassVar[Network] = "connection"

    @property
    def connection(self) -> Conn | None:
        return self.conn

    @property
    def where(self) -> Place | None:
        conn = self.conn
        return None if conn is None else conn.place


def place_label(conn: Conn | None) -> str:
    """The text model's container mark of an event on ``conn``: "" on the host."""
    return "" if conn is None or conn.place is None else conn.place.label()


@dataclass(slots=True)
class Conn(Event):
    """A TCP connection of a traced process, or its end (kind "close"). Kind "proc": set up
    before capture started, found in /proc when its first data showed up."""

    kind: ConnKind
    fd: int
    sock: int
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    place: Place | None = None

    json_type: ClassVar[str] = "conn"
    network: ClassVar[Network] = "connection"

    @property
    def connection(self) -> Conn:
        return self

    @property
    def where(self) -> Place | None:
        return self.place

    @property
    def local(self) -> str | None:
        return _endpoint(self.laddr, self.lport)

    @property
    def remote(self) -> str | None:
        return _endpoint(self.raddr, self.rport)

    def text_line(self) -> str:
        who = f"{self.comm} pid {self.pid} fd {self.fd}"
        if self.place is not None:
            who += self.place.label()
        if self.kind == "close":
            return f"{who}  CLOSE"
        local, remote = shown(self.local), shown(self.remote)
        if self.kind == "proc":
            return f"{who}  SOCKET  {local} -> {remote} (from /proc)"
        arrow = f"{local} -> {remote}" if self.kind == "connect" else f"{remote} -> {local}"
        return f"{who}  {self.kind.upper()}  {arrow}"

    def json_fields(self) -> dict[str, Any]:
        return {"event": self.kind, "pid": self.pid, "tid": self.tid, "uid": self.uid,
                "comm": self.comm, "fd": self.fd, **endpoints(self),
                **place_fields(self.place)}


@dataclass(slots=True)
class TlsData(OnConnection, Event):
    """The plaintext of one TLS read or write call, joined from its chunks. ``conn_id``
    identifies the TLS connection within its process (OpenSSL's SSL*, a Go *tls.Conn, ...)."""

    fd: int
    version: int
    direction: Literal["read", "write"]
    func: str
    conn_id: int
    data: bytes
    total_len: int  # what the call returned; len(data) is smaller only if chunks were lost
    conn: Conn | None = None
    place: Place | None = None

    json_type: ClassVar[str] = "data"

    @property
    def where(self) -> Place | None:
        return self.place

    @property
    def version_name(self) -> str:
        return TLS_VERSIONS.get(self.version, f"0x{self.version:04x}" if self.version else "?")

    @property
    def missing(self) -> int:
        return self.total_len - len(self.data)

    # text() and json_line() build, with the same code every time, what a thread's calls
    # on one connection share only once, and keep it in style.memo: keyed by those fields
    # and the connection's id, and holding the connection, so that an id the memo keys
    # cannot be reused by a new object while its entry lives.

    def _shared(self, style: Style, model: str,
                build: Callable[[], tuple[str, ...]]) -> tuple[Any, ...]:
        """(conn, *build()) from ``style.memo``, built on the first call of the thread's
        calls on this connection."""
        conn = self.conn
        key = (model, self.pid, self.tid, self.uid, self.comm, self.fd, self.version,
               self.direction, self.func, id(conn), self.place)
        memo = style.memo
        shared = memo.get(key)
        if shared is None or shared[0] is not conn:
            if len(memo) >= MEMO_MAX:
                memo.clear()
            shared = memo[key] = (conn, *build())
        return shared

    def text(self, style: Style) -> str:
        shared = self._shared(style, "text", self._text_shared)
        data = self.data
        size = len(data)
        missing = self.total_len - size
        lost = f" ({missing} of {self.total_len} lost)" if missing else ""
        body = style.payload(data)
        if not body.endswith("\n"):
            body += "\n"
        return f"--- {style.when(self.timestamp_ns)}{shared[1]}{size} bytes{lost}{shared[2]}{body}"

    def _text_shared(self) -> tuple[str, str]:
        """The text model's header around the time and size: what comes between them, and
        what comes after the size."""
        conn = self.conn
        if conn is not None:
            src, dst = shown(conn.local), shown(conn.remote)
            if self.direction == "read":
                src, dst = dst, src
            tuple_ = f"{src} -> {dst}"
        else:
            tuple_ = "? -> ?"
        what = "WRITE" if self.direction == "write" else "READ"
        where = self.place.label() if self.place is not None else ""
        return (f"  {self.comm}  pid {self.pid} tid {self.tid} uid {self.uid}  fd {self.fd}  "
                f"{self.version_name}{where}\n    {tuple_}  {what} ", f"  [{self.func}]\n")

    def json_fields(self) -> dict[str, Any]:
        return {"pid": self.pid, "tid": self.tid, "uid": self.uid, "comm": self.comm,
                "fd": self.fd, "tls_version": self.version_name, "direction": self.direction,
                "func": self.func, **endpoints(self.conn), **place_fields(self.place),
                "length": len(self.data), "missing": self.missing, "data": self.data}

    def json_line(self, style: Style) -> str:
        """:meth:`json` encoded, byte for byte, built directly: a dict and the generic
        encoder cost several times more, and data events are the bulk of a capture."""
        shared = self._shared(style, "json", self._json_shared)
        data = self.data
        try:
            text, encoding = data.decode("utf-8"), '"utf-8"'
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(data).decode(), '"base64"'
        ts = self.timestamp_ns
        return (f'{{"type": "data", "time": "{style.iso(ts)}", "ts_ns": {ts}, {shared[1]}'
                f'"length": {len(data)}, "missing": {self.total_len - len(data)}, '
                f'"data": {json_str(text)}, "data_encoding": {encoding}}}')

    def _json_shared(self) -> tuple[str]:
        """The json fields from "pid" to "remote", with the ", " after them."""
        ends = endpoints(self.conn)
        local, remote = json_text(ends["local"]), json_text(ends["remote"])
        where = place_fields(self.place)
        mntns, cgroup = json_text(where["mntns"]), json_text(where["cgroup"])
        return (f'"pid": {self.pid}, "tid": {self.tid}, "uid": {self.uid}, '
                f'"comm": {json_str(self.comm)}, "fd": {self.fd}, '
                f'"tls_version": {json_str(self.version_name)}, '
                f'"direction": {json_str(self.direction)}, "func": {json_str(self.func)}, '
                f'"local": {local}, "remote": {remote}, "mntns": {mntns}, '
                f'"cgroup": {cgroup}, ',)


@dataclass(slots=True)
class OtherLibrary(Event):
    """A traced process made a connection while mapping another TLS library than the one
    this capture watches: its plaintext is not here, and ``module`` would capture it. The
    live layer learned it from /proc; it is recorded as a fact, so replay shows it too."""

    library: str  # the file name it maps, e.g. libgnutls.so.30
    module: str  # the ecapture module that captures that library

    json_type: ClassVar[str] = "other_library"

    def text_line(self) -> str:
        return (f"{self.comm} pid {self.pid}  uses {self.library}, which this capture does not "
                f"watch: `ecapture {self.module}` captures its plaintext")

    def json_fields(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "library": self.library,
                "module": self.module}


@dataclass(slots=True)
class LibraryAttached(Event):
    """A library file first mapped by a process that started during the capture (a new
    container's copy) got its probes ``after_ms`` after that process started, or could not
    (``refused`` says why). Until then its plaintext is not captured: this says so, in the
    recording and on screen. The process fields are the starting process's; the time is
    when the attach ended, on the kernel's clock. ``skipped`` counts processes whose
    mappings were not read at all (too many starting at once); the process named is the
    last of them."""

    path: str  # as the process knows it
    mntns: int | None
    version: str | None
    build_id: str | None
    after_ms: float
    refused: str | None = None
    skipped: int = 0

    json_type: ClassVar[str] = "attached"
    filtered: ClassVar[bool] = False
    kernel_time: ClassVar[bool] = False

    def text_line(self) -> str:
        where = f" in mntns {self.mntns}" if self.mntns is not None else ""
        version = f" ({self.version})" if self.version else ""
        if self.skipped:
            return (f"NOT LOOKED AT: {self.skipped} process{'es' if self.skipped != 1 else ''}"
                    f" (the last: {self.comm} pid {self.pid}): {self.refused}")
        if self.refused is not None:
            return (f"NOT ATTACHED {self.path}{version}{where}, mapped by {self.comm} pid "
                    f"{self.pid}: {self.refused}")
        return (f"ATTACHED {self.path}{version}{where} {self.after_ms:.1f} ms after "
                f"{self.comm} pid {self.pid} started: what it sent before then is not "
                "captured")

    def json_fields(self) -> dict[str, Any]:
        return {"path": self.path, "mntns": self.mntns, "version": self.version,
                "build_id": self.build_id, "pid": self.pid, "comm": self.comm,
                "after_ms": round(self.after_ms, 3), "refused": self.refused,
                "skipped": self.skipped}


@dataclass(slots=True)
class KeyLogEntry(Event):
    """One TLS secret as an SSLKEYLOGFILE line (RFC 9850): ``label client_random secret``.
    Every TLS module produces these; the keylog and pcap models write them, the text and
    json models do not show them (secrets do not belong on a terminal)."""

    label: str
    client_random: bytes
    secret: bytes

    network: ClassVar[Network] = "unknown"

    @property
    def line(self) -> str:
        return f"{self.label} {self.client_random.hex()} {self.secret.hex()}"

    def text(self, style: Style) -> str:
        return ""


@dataclass(slots=True)
class Packet(Event):
    """A packet the TC classifier saw, as it was on the wire (pcap model). It belongs to no
    process: pid, tid and uid are 0 and comm is empty."""

    ifindex: int
    direction: Literal["ingress", "egress"]
    length: int  # on the wire; len(data) is smaller only when bytes could not be captured
    data: bytes

    process_scoped: ClassVar[bool] = False
    network: ClassVar[Network] = "unknown"

    def text(self, style: Style) -> str:
        return ""
