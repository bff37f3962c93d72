"""Outputs: formatters are pure (event -> text); a sink writes to the stream it was given.

Every output implements :class:`Output`. They receive the same events live and in replay,
so a replay prints exactly what the live run printed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol, TextIO


class Output(Protocol):
    def write(self, event: Any) -> None: ...

    def close(self) -> None: ...


def make_output(model: str, stream: TextIO, clock_offset_ns: int, hex: bool = False,
                tz: dt.tzinfo | None = None, keylogfile: str | None = None,
                pcapfile: str | None = None, ifname: str | None = None,
                pcap_filter: str | None = None) -> Output:
    """The output of a model ("text", "json", "keylog", "pcap"), for the CLI and test
    replays."""
    # Imported here: the models import the streams layer, which imports nothing of ours.
    from ecapture.outputs.jsonl import JsonOutput
    from ecapture.outputs.keylog import KeylogOutput
    from ecapture.outputs.text import TextOutput

    if model == "keylog":
        return KeylogOutput(keylogfile or "ecapture_openssl_key.log")
    if model == "pcap":
        from ecapture.outputs.pcap import PcapOutput

        return PcapOutput(pcapfile or "save.pcapng", clock_offset_ns, ifname, pcap_filter)
    if model == "json":
        return JsonOutput(stream, clock_offset_ns, tz=tz)
    return TextOutput(stream, clock_offset_ns, hex=hex, tz=tz)
