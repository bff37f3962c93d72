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
    mntns: int | None = None
    cgroup: str | None = None  # this cgroup or one below it
    since_ns: int | None = None  # wall clock, ns since the epoch
    until_ns: int | None = None
    clock_offset_ns: int = 0

    def __post_init__(self) -> None:
        if self.host is not None:
            self.host = _normal_host(self.host)
        if self.cgroup is not None:
            self.cgroup = "/" + self.cgroup.strip("/")
        self._passed: set[tuple[int, int]] = set()  # (pid, fd) of connections let through

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.pid, self.comm, self.port, self.host,
                                           self.mntns, self.cgroup, self.since_ns,
                                           self.until_ns))

    def _in_place(self, event: Event) -> bool:
        """Whether the event's process ran in the --mntns and --cgroup asked for. An event
        that does not say where (another module's, or a process gone before it was looked
        up) is not let through: the filter asks for one place."""
        place = event.where
        if place is None:
            return False
        if self.mntns is not None and place.mntns != self.mntns:
            return False
        if self.cgroup is not None:
            cgroup = place.cgroup
            if cgroup is None:
                return False
            return self.cgroup == "/" or cgroup == self.cgroup or \
                cgroup.startswith(self.cgroup + "/")
        return True

    def __call__(self, event: Event) -> bool:
        if not event.filtered:
            return True  # lost-event notices and the like always pass
        if event.process_scoped:
            if self.pid is not None and event.pid != self.pid:
                return False
            if self.comm is not None and event.comm != self.comm:
                return False
            if (self.mntns is not None or self.cgroup is not None) and \
                    not self._in_place(event):
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
