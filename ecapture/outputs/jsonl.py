"""The json model: one JSON object per line, for jq and log pipelines.

Field names are stable and documented in docs/json.md; new fields may be added, existing
ones keep their names and meaning. Bytes are text when they are valid UTF-8, else base64,
and ``*_encoding`` says which.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any, TextIO

from ecapture.events import Conn, LostNotice, Packet, SslData
from ecapture.outputs.text import client_server, wall_time
from ecapture.parsers.messages import HttpRequest, HttpResponse
from ecapture.streams import FrameNotice, HttpExchange, ProtocolNotice
from ecapture.tlskeys import MasterSecret


def _bytes(prefix: str, data: bytes) -> dict[str, Any]:
    try:
        return {prefix: data.decode("utf-8"), f"{prefix}_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {prefix: base64.b64encode(data).decode(), f"{prefix}_encoding": "base64"}


def _conn(conn: Conn | None) -> dict[str, Any]:
    if conn is None or conn.kind == "close":
        return {"local": None, "remote": None}
    return {"local": conn.local, "remote": conn.remote}


def _message(msg: HttpRequest | HttpResponse | None) -> dict[str, Any] | None:
    if msg is None:
        return None
    out: dict[str, Any] = {"http_version": msg.http_version}
    if isinstance(msg, HttpRequest):
        out.update(method=msg.method, authority=msg.authority, path=msg.path)
    else:
        out.update(status=msg.status, reason=msg.reason)
    out.update(headers=[[k, v] for k, v in msg.headers], body_size=msg.body_size,
               complete=msg.complete, start_ns=msg.start_ns, end_ns=msg.end_ns,
               **_bytes("body", msg.body))
    return out


class JsonOutput:
    def __init__(self, stream: TextIO, clock_offset_ns: int, tz: dt.tzinfo | None = None):
        self.stream = stream
        self.clock_offset_ns = clock_offset_ns
        self.tz = tz

    def _time(self, ts: int) -> dict[str, Any]:
        return {"time": wall_time(ts, self.clock_offset_ns, self.tz).replace(" ", "T"),
                "ts_ns": ts}

    def to_dict(self, ev: Any) -> dict[str, Any]:
        if isinstance(ev, HttpExchange):
            client, server = client_server(ev.conn, ev.role)
            return {"type": "http", **self._time(ev.timestamp_ns), "pid": ev.pid,
                    "comm": ev.comm, "protocol": ev.protocol, "role": ev.role,
                    "client": client, "server": server, "stream_id": ev.stream_id,
                    "latency_ns": ev.latency_ns, "request": _message(ev.request),
                    "informational": [_message(i) for i in ev.informational],
                    "response": _message(ev.response)}
        if isinstance(ev, SslData):
            return {"type": "data", **self._time(ev.timestamp_ns), "pid": ev.pid,
                    "tid": ev.tid, "uid": ev.uid, "comm": ev.comm, "fd": ev.fd,
                    "tls_version": ev.version_name, "direction": ev.direction,
                    "func": ev.func, **_conn(ev.conn), "length": len(ev.data),
                    "missing": ev.missing, **_bytes("data", ev.data)}
        if isinstance(ev, Conn):
            return {"type": "conn", **self._time(ev.timestamp_ns), "event": ev.kind,
                    "pid": ev.pid, "tid": ev.tid, "uid": ev.uid, "comm": ev.comm,
                    "fd": ev.fd, **_conn(ev)}
        if isinstance(ev, ProtocolNotice):
            return {"type": "protocol_error", **self._time(ev.timestamp_ns), "pid": ev.pid,
                    "comm": ev.comm, **_conn(ev.conn), "protocol": ev.error.protocol,
                    "side": ev.error.side, "reason": ev.error.reason}
        if isinstance(ev, FrameNotice):
            f = ev.frame
            return {"type": "http2_frame", **self._time(ev.timestamp_ns), "pid": ev.pid,
                    "comm": ev.comm, **_conn(ev.conn), "side": f.side, "frame": f.type,
                    "stream_id": f.stream_id, "flags": list(f.flags), "detail": f.detail}
        if isinstance(ev, LostNotice):
            return {"type": "lost", **self._time(ev.recv_ns), "module": ev.module,
                    "map": ev.map_name, "count": ev.count}
        if hasattr(ev, "json_fields"):  # a module's own event (events.ModuleEvent)
            out = {"type": ev.json_type, **self._time(ev.timestamp_ns)}
            for key, value in ev.json_fields().items():
                out.update(_bytes(key, value) if isinstance(value, bytes) else {key: value})
            return out
        return {"type": "unknown", "repr": repr(ev)}

    def write(self, event: Any) -> None:
        if isinstance(event, MasterSecret | Packet):
            return  # secrets and packets go to the keylog and pcap models only
        self.stream.write(json.dumps(self.to_dict(event), ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.stream.flush()
