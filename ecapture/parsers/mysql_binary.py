"""The MySQL/MariaDB client/server protocol's binary values: what a COM_STMT_EXECUTE
payload says (statement id, parameter types and values). Pure: bytes in, values out.

A COM_STMT_EXECUTE payload (after the command byte) is::

    stmt_id u32, flags u8, iteration_count u32,
    and when the statement has parameters (n, known from its COM_STMT_PREPARE_OK):
    null_bitmap[(n + 7) / 8], new_params_bound_flag u8,
    types[2 * n] when that flag is 1 (else the types of the statement's last execution),
    the values of the parameters that are neither NULL nor sent by COM_STMT_SEND_LONG_DATA.

Bad input never raises: :func:`decode_execute` says what it could not decode in
``problem``, and the caller still has the statement id when the payload had four bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

#: enum enum_server_command, the commands a client sends (MySQL and MariaDB agree on these;
#: 250..255 are MariaDB's own).
COMMANDS = {
    0: "sleep", 1: "quit", 2: "init_db", 3: "query", 4: "field_list", 5: "create_db",
    6: "drop_db", 7: "refresh", 8: "shutdown", 9: "statistics", 10: "processlist",
    11: "connect", 12: "kill", 13: "debug", 14: "ping", 15: "time", 16: "delayed_insert",
    17: "change_user", 18: "binlog_dump", 19: "table_dump", 20: "connect_out",
    21: "register_slave", 22: "prepare", 23: "execute", 24: "long_data", 25: "close",
    26: "reset", 27: "set_option", 28: "fetch", 29: "daemon", 30: "binlog_dump_gtid",
    31: "reset_connection", 32: "clone", 33: "subscribe_group_replication_stream",
    250: "bulk_execute", 251: "slave_worker", 252: "slave_io", 253: "slave_sql",
    254: "multi", 255: "end",
}
COM_QUIT = 1
COM_INIT_DB = 2
COM_QUERY = 3
COM_STMT_PREPARE = 22
COM_STMT_EXECUTE = 23
COM_STMT_SEND_LONG_DATA = 24
COM_STMT_CLOSE = 25
COM_STMT_RESET = 26
COM_STMT_FETCH = 28
#: commands whose payload starts with a statement id
STMT_COMMANDS = frozenset({COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE,
                           COM_STMT_RESET, COM_STMT_FETCH, 250})
#: the statement id MariaDB reads as "the statement this connection prepared last"
LAST_PREPARED = 0xFFFFFFFF

# enum_field_types
T_DECIMAL, T_TINY, T_SHORT, T_LONG, T_FLOAT, T_DOUBLE, T_NULL, T_TIMESTAMP = range(8)
T_LONGLONG, T_INT24, T_DATE, T_TIME, T_DATETIME, T_YEAR = range(8, 14)
_INTS = {T_TINY: (1, "b"), T_SHORT: (2, "h"), T_YEAR: (2, "h"), T_LONG: (4, "i"),
         T_INT24: (4, "i"), T_LONGLONG: (8, "q")}
_FLOATS = {T_FLOAT: (4, "f"), T_DOUBLE: (8, "d")}
_DATES = frozenset({T_TIMESTAMP, T_DATE, T_DATETIME, 14, 17, 18})
_TIMES = frozenset({T_TIME, 19})
UNSIGNED_FLAG = 0x80

Value = int | float | str | bytes | None


@dataclass(frozen=True, slots=True)
class StmtExecute:
    """A decoded COM_STMT_EXECUTE payload. ``values`` is None when they could not be
    decoded (``problem`` says why); a parameter sent by COM_STMT_SEND_LONG_DATA has the
    value ``LONG_DATA``."""

    stmt_id: int
    flags: int = 0
    types: tuple[int, ...] = ()  # type | flags << 8, per parameter
    values: tuple[Value, ...] | None = None
    problem: str | None = None
    new_types: bool = field(default=False)


class LongData(bytes):
    """The placeholder of a parameter whose value came by COM_STMT_SEND_LONG_DATA."""


LONG_DATA = LongData(b"")


class _Short(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes, at: int):
        self.data = data
        self.at = at

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise _Short
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def lenenc(self) -> int:
        first = self.take(1)[0]
        if first < 0xFB:
            return first
        size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
        if size is None:
            raise ValueError(f"bad length-encoded integer prefix {first:#x}")
        return int.from_bytes(self.take(size), "little")


def stmt_id_of(payload: bytes) -> int | None:
    """The statement id a COM_STMT_* payload starts with (None: fewer than 4 bytes)."""
    return int.from_bytes(payload[:4], "little") if len(payload) >= 4 else None


def decode_execute(payload: bytes, param_count: int | None,
                   earlier_types: tuple[int, ...] | None = None,
                   long_data: frozenset[int] = frozenset()) -> StmtExecute:
    """Decode a COM_STMT_EXECUTE payload of a statement with ``param_count`` parameters
    (None: unknown), whose last execution bound ``earlier_types``, and whose parameters
    ``long_data`` were sent by COM_STMT_SEND_LONG_DATA since."""
    if len(payload) < 9:
        return StmtExecute(stmt_id_of(payload) or 0, problem="payload shorter than 9 bytes")
    stmt_id = int.from_bytes(payload[:4], "little")
    flags = payload[4]
    if param_count is None:
        return StmtExecute(stmt_id, flags, problem="parameter count unknown (prepare not seen)")
    if param_count == 0:
        return StmtExecute(stmt_id, flags, values=())
    r = _Reader(payload, 9)
    try:
        nulls = r.take((param_count + 7) // 8)
        bound = r.take(1)[0]
        if bound:
            raw = r.take(2 * param_count)
            types = tuple(raw[i] | raw[i + 1] << 8 for i in range(0, len(raw), 2))
        elif earlier_types is not None and len(earlier_types) == param_count:
            types = earlier_types
        else:
            return StmtExecute(stmt_id, flags, problem="parameter types were bound by an "
                               "execution not seen")
        values: list[Value] = []
        for i, t in enumerate(types):
            if nulls[i // 8] >> (i % 8) & 1:
                values.append(None)
            elif i in long_data:
                values.append(LONG_DATA)
            else:
                values.append(_value(r, t))
    except _Short:
        return StmtExecute(stmt_id, flags, problem="payload ends inside the parameters")
    except ValueError as e:
        return StmtExecute(stmt_id, flags, problem=str(e))
    if r.at != len(payload):
        return StmtExecute(stmt_id, flags, types, problem=f"{len(payload) - r.at} bytes left "
                           "after the parameters")
    return StmtExecute(stmt_id, flags, types, tuple(values), new_types=bool(bound))


def _value(r: _Reader, type_flags: int) -> Value:
    t = type_flags & 0xFF
    unsigned = bool(type_flags >> 8 & UNSIGNED_FLAG)
    if t in _INTS:
        size, fmt = _INTS[t]
        return int(struct.unpack("<" + (fmt.upper() if unsigned else fmt), r.take(size))[0])
    if t in _FLOATS:
        size, fmt = _FLOATS[t]
        return float(struct.unpack("<" + fmt, r.take(size))[0])
    if t == T_NULL:
        return None
    if t in _DATES:
        return _date(r.take(r.take(1)[0]))
    if t in _TIMES:
        return _time(r.take(r.take(1)[0]))
    raw = r.take(r.lenenc())
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _date(raw: bytes) -> str:
    if len(raw) not in (0, 4, 7, 11):
        raise ValueError(f"date of {len(raw)} bytes")
    if not raw:
        return "0000-00-00 00:00:00"
    y = int.from_bytes(raw[:2], "little")
    text = f"{y:04d}-{raw[2]:02d}-{raw[3]:02d}"
    if len(raw) >= 7:
        text += f" {raw[4]:02d}:{raw[5]:02d}:{raw[6]:02d}"
    if len(raw) == 11:
        text += f".{int.from_bytes(raw[7:], 'little'):06d}"
    return text


def _time(raw: bytes) -> str:
    if len(raw) not in (0, 8, 12):
        raise ValueError(f"time of {len(raw)} bytes")
    if not raw:
        return "00:00:00"
    sign = "-" if raw[0] else ""
    hours = int.from_bytes(raw[1:5], "little") * 24 + raw[5]
    text = f"{sign}{hours:02d}:{raw[6]:02d}:{raw[7]:02d}"
    if len(raw) == 12:
        text += f".{int.from_bytes(raw[8:], 'little'):06d}"
    return text


def sql_literal(value: Value) -> str:
    """A value as an SQL literal, for showing an execution's parameters."""
    if value is None:
        return "NULL"
    if isinstance(value, LongData):
        return "<long data>"
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, bytes):
        return "X'" + value.hex() + "'"
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def json_value(value: Value) -> int | float | str | None:
    """A value for the json model: bytes that are not UTF-8 as hex (X'...')."""
    if isinstance(value, LongData):
        return "<long data>"
    if isinstance(value, bytes):
        return sql_literal(value)
    return value

