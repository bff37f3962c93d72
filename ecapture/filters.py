"""Replay filters, applied to decoded events before they reach conversations and outputs.

Pure: wall-clock bounds are compared through the recording's clock offset. Filters see
events only through :class:`ecapture.events.Event`, never through a module's classes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from ecapture.errors import ConfigError
from ecapture.events import Event


def parse_when(text: str) -> int:
    """An ISO 8601 date and time (naive means local time) -> ns since the epoch."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"not a date and time: {text!r} (use e.g. 2026-11-24T15:55:23)") \
            from None
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _normal_host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ConfigError(f"--host wants an IP address, not {text!r}") from None


@dataclass
class EventFilter:
    """The replay filters, over :class:`Event` alone: what an event declares (is it a
    process's, which connection is it on) decides which filters apply to it."""

    pid: int | None = None
    comm: str | None = None
    port: int | None = None
    host: str | None = None
    since_ns: int | None = None  # wall clock, ns since the epoch
    until_ns: int | None = None
    clock_offset_ns: int = 0

    def __post_init__(self) -> None:
        if self.host is not None:
            self.host = _normal_host(self.host)
        self._passed: set[tuple[int, int]] = set()  # (pid, fd) of connections let through

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.pid, self.comm, self.port, self.host,
                                           self.since_ns, self.until_ns))

    def __call__(self, event: Event) -> bool:
        if not event.filtered:
            return True  # lost-event notices and the like always pass
        if event.process_scoped:
            if self.pid is not None and event.pid != self.pid:
                return False
            if self.comm is not None and event.comm != self.comm:
                return False
        wall = event.timestamp_ns + self.clock_offset_ns
        if self.since_ns is not None and wall < self.since_ns:
            return False
        if self.until_ns is not None and wall > self.until_ns:
            return False
        if self.port is None and self.host is None:
            return True
        if event.network == "unknown":
            return True  # e.g. TLS secrets: which connection they unlock is not known here
        conn = event.connection if event.network == "connection" else None
        if conn is None:
            return False
        key = (conn.pid, conn.fd)
        if conn.kind == "close":
            # A close carries no addresses: it passes when the connection it ends did.
            if event is conn and key in self._passed:
                self._passed.discard(key)
                return True
            return False
        if self.port is not None and self.port not in (conn.lport, conn.rport):
            return False
        if self.host is not None and self.host not in (conn.laddr, conn.raddr):
            return False
        self._passed.add(key)
        return True
