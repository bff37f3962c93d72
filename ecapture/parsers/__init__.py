"""Sans-IO protocol parsers: bytes in, messages out. No I/O, no clocks, no globals.

A parser follows one connection and is fed the bytes each side sent, in order:
``feed(side, data, ts_ns) -> list[Message]`` and ``close() -> list[Message]`` at the end.
The same bytes fed whole, byte by byte or split anywhere give the same messages. Bad input
never raises: it yields a :class:`~ecapture.parsers.messages.ProtocolError` once, after which
that side's bytes come back as :class:`~ecapture.parsers.messages.RawData`.
"""
