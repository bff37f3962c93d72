"""COM_STMT_EXECUTE payloads (ecapture.parsers.mysql_binary): parameter values of every
binary-protocol type, types bound by an earlier execution, long data, and bad input, which
is told, never raised."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecapture.parsers import mysql_binary as mb


def payload(types: list[int], values: bytes, nulls: int = 0, stmt_id: int = 1,
            bound: bool = True) -> bytes:
    head = struct.pack("<IBI", stmt_id, 0, 1)
    bitmap = nulls.to_bytes((len(types) + 7) // 8, "little")
    typed = b"".join(struct.pack("<H", t) for t in types) if bound else b""
    return head + bitmap + (b"\x01" if bound else b"\x00") + typed + values


UNSIGNED = mb.UNSIGNED_FLAG << 8


@pytest.mark.parametrize(("type_", "raw", "value"), [
    (mb.T_TINY, b"\xff", -1),
    (mb.T_TINY | UNSIGNED, b"\xff", 255),
    (mb.T_SHORT, struct.pack("<h", -300), -300),
    (mb.T_LONG, struct.pack("<i", -70000), -70000),
    (mb.T_LONG | UNSIGNED, struct.pack("<I", 4000000000), 4000000000),
    (mb.T_LONGLONG, struct.pack("<q", -(1 << 40)), -(1 << 40)),
    (mb.T_LONGLONG | UNSIGNED, struct.pack("<Q", (1 << 64) - 1), (1 << 64) - 1),
    (mb.T_YEAR, struct.pack("<h", 2024), 2024),
    (mb.T_FLOAT, struct.pack("<f", 1.5), 1.5),
    (mb.T_DOUBLE, struct.pack("<d", -2.25), -2.25),
    (253, b"\x05hello", "hello"),
    (254, b"\xfc\x2c\x01" + b"a" * 300, "a" * 300),
    (252, b"\x02\xff\x00", b"\xff\x00"),  # not UTF-8: kept as bytes
    (246, b"\x041.50", "1.50"),
    (mb.T_DATE, b"\x04\xe8\x07\x01\x02", "2024-01-02"),
    (mb.T_DATETIME, b"\x07\xe8\x07\x01\x02\x03\x04\x05", "2024-01-02 03:04:05"),
    (mb.T_TIMESTAMP, b"\x0b\xe8\x07\x01\x02\x03\x04\x05" + struct.pack("<I", 6),
     "2024-01-02 03:04:05.000006"),
    (mb.T_DATETIME, b"\x00", "0000-00-00 00:00:00"),
    (mb.T_TIME, b"\x08\x01" + struct.pack("<I", 1) + b"\x02\x03\x04", "-26:03:04"),
    (mb.T_TIME, b"\x00", "00:00:00"),
])
def test_each_type_decodes(type_: int, raw: bytes, value: mb.Value) -> None:
    out = mb.decode_execute(payload([type_], raw), 1)
    assert out.problem is None and out.values == (value,)


def test_nulls_and_several_values() -> None:
    out = mb.decode_execute(payload([8, 253, 8], struct.pack("<q", 7) + b"\x01x", nulls=0b100),
                            3)
    assert out.values == (7, "x", None) and out.new_types and out.stmt_id == 1


def test_types_of_an_earlier_execution_are_reused() -> None:
    first = mb.decode_execute(payload([3], struct.pack("<i", 1)), 1)
    again = payload([3], struct.pack("<i", 2), bound=False)
    assert mb.decode_execute(again, 1, first.types).values == (2,)
    unknown = mb.decode_execute(again, 1, None)
    assert unknown.values is None and "not seen" in (unknown.problem or "")


def test_long_data_parameters_are_not_in_the_payload() -> None:
    out = mb.decode_execute(payload([252, 3], struct.pack("<i", 5)), 2,
                            long_data=frozenset({0}))
    assert out.values == (mb.LONG_DATA, 5)
    assert mb.sql_literal(mb.LONG_DATA) == "<long data>"


def test_no_parameters() -> None:
    assert mb.decode_execute(struct.pack("<IBI", 3, 0, 1), 0).values == ()


@pytest.mark.parametrize(("data", "count", "problem"), [
    (b"\x01\x00", 1, "shorter than 9"),
    (struct.pack("<IBI", 1, 0, 1), None, "parameter count unknown"),
    (payload([3], b"\x01\x02"), 1, "ends inside"),
    (payload([3], struct.pack("<i", 1) + b"!"), 1, "1 bytes left"),
    (payload([253], b"\xfb"), 1, "bad length-encoded"),
    (payload([mb.T_DATE], b"\x03abc"), 1, "date of 3 bytes"),
    (payload([mb.T_TIME], b"\x05abcde"), 1, "time of 5 bytes"),
])
def test_bad_payloads_say_why(data: bytes, count: int | None, problem: str) -> None:
    out = mb.decode_execute(data, count)
    assert out.values is None and problem in (out.problem or "")


@given(st.binary(max_size=64), st.one_of(st.none(), st.integers(0, 20)))
def test_any_bytes_decode_or_say_why(data: bytes, count: int | None) -> None:
    out = mb.decode_execute(data, count)
    assert (out.values is None) == (out.problem is not None)
    if out.values is not None:
        assert len(out.values) == count


@given(st.lists(st.one_of(st.none(), st.integers(-(1 << 63), (1 << 63) - 1),
                          st.text(max_size=300)), max_size=12))
def test_values_round_trip(values: list[int | str | None]) -> None:
    types, raw, nulls = [], b"", 0
    for i, v in enumerate(values):
        if v is None:
            types.append(6)
            nulls |= 1 << i
        elif isinstance(v, int):
            types.append(8)
            raw += struct.pack("<q", v)
        else:
            b = v.encode()
            types.append(253)
            raw += (bytes([len(b)]) if len(b) < 251 else b"\xfc" + struct.pack("<H", len(b)))
            raw += b
    out = mb.decode_execute(payload(types, raw, nulls), len(values))
    assert out.values == tuple(values)


@pytest.mark.parametrize(("value", "text"), [
    (None, "NULL"), (5, "5"), (1.5, "1.5"), ("it's", "'it\\'s'"), (b"\x00\xff", "X'00ff'"),
])
def test_sql_literals(value: mb.Value, text: str) -> None:
    assert mb.sql_literal(value) == text
    assert mb.json_value(value) == (text if isinstance(value, bytes) else value)


def test_statement_ids() -> None:
    assert mb.stmt_id_of(struct.pack("<I", 77) + b"rest") == 77
    assert mb.stmt_id_of(b"\x01") is None
