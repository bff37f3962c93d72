"""Outputs: one per model. An output writes what events say about themselves
(:class:`ecapture.events.Event`) and never looks at a module's classes; it receives the
same events live and in replay, so a replay prints exactly what the live run printed.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol, TextIO

from ecapture.events import Event

MODELS = ("text", "json", "keylog", "pcap")


class Output(Protocol):
    def write(self, event: Event) -> None: ...

    def close(self) -> None: ...


class Ticking(Protocol):
    """An output that holds events back for ordering (pcap) and releases them with time."""

    def tick(self, now_ns: int) -> None: ...


def make_output(model: str, stream: TextIO, clock_offset_ns: int, hex: bool = False,
                tz: dt.tzinfo | None = None, keylogfile: str = "ecapture_key.log",
                pcapfile: str = "save.pcapng", ifname: str | None = None,
                pcap_filter: str | None = None) -> Output:
    """The output of a model ("text", "json", "keylog", "pcap"), for the CLI and test
    replays."""
    if model == "keylog":
        from ecapture.outputs.keylog import KeylogOutput

        return KeylogOutput(keylogfile)
    if model == "pcap":
        from ecapture.outputs.pcap import PcapOutput

        return PcapOutput(pcapfile, clock_offset_ns, ifname, pcap_filter)
    if model == "json":
        from ecapture.outputs.jsonl import JsonOutput

        return JsonOutput(stream, clock_offset_ns, tz=tz)
    from ecapture.outputs.text import TextOutput

    return TextOutput(stream, clock_offset_ns, hex=hex, tz=tz)
