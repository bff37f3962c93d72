"""The pcap model: packets and TLS secrets into one pcapng file that Wireshark and tshark
decrypt with nothing else to configure.

Secrets must come before the packets they decrypt, but a connection's secrets are read at
its first application-data call, just after its handshake packets went by. So packets are
held back for HOLD_NS of event time while secrets are written at once, in Decryption
Secrets Blocks that then precede the packets they unlock. Held packets are written in
timestamp order: perf buffers are per CPU and deliver them interleaved, and TCP
reassembly in Wireshark needs them in order.
"""

from __future__ import annotations

import heapq
import itertools
import os

from ecapture.events import Event, KeyLogEntry, Packet
from ecapture.outputs.pcapng import PcapngWriter
from ecapture.packetfilter import compile_matcher
from ecapture.privatefile import open_private

HOLD_NS = 2_000_000_000
LINKTYPE_ETHERNET = 1  # loopback too: Linux gives lo frames an all-zero Ethernet header


class PcapOutput:
    def __init__(self, path: str, clock_offset_ns: int, ifname: str | None,
                 filter_expr: str | None = None):
        self.path = path
        self.clock_offset_ns = clock_offset_ns
        # None: the kernel already applied the filter (or there is none).
        self.accept = compile_matcher(filter_expr) if filter_expr else None
        self.packets = 0
        self.secrets = 0
        # It holds TLS secrets: readable by the owner only, like recordings.
        self._file = os.fdopen(open_private(path, "pcapng file"), "wb")
        self._writer = PcapngWriter(self._file, [(ifname or "any", LINKTYPE_ETHERNET)])
        self._held: list[tuple[int, int, Packet]] = []  # heap by timestamp
        self._seq = itertools.count()
        self._secrets: list[str] = []  # key log lines for the next Decryption Secrets Block

    def write(self, event: Event) -> None:
        if isinstance(event, KeyLogEntry):
            # Gathered into one block, written before the next packets go out.
            self._secrets.append(event.line)
        elif isinstance(event, Packet):
            if self.accept is not None and not self.accept(event.data, event.length):
                return
            heapq.heappush(self._held, (event.timestamp_ns, next(self._seq), event))
            self._release(event.timestamp_ns - HOLD_NS)

    def tick(self, now_ns: int) -> None:
        """Live: write packets older than the hold window even if no newer packet came."""
        self._release(now_ns - HOLD_NS)

    def _release(self, upto: int) -> None:
        wrote = False
        if self._secrets:
            self._writer.add_secrets(self._secrets)
            self.secrets += len(self._secrets)
            self._secrets = []
            wrote = True
        while self._held and self._held[0][0] <= upto:
            packet = heapq.heappop(self._held)[2]
            self._writer.add_packet(0, packet.timestamp_ns + self.clock_offset_ns, packet.data,
                                    packet.length)
            self.packets += 1
            wrote = True
        if wrote:
            self._writer.flush()

    def summary(self) -> str:
        return (f"pcap: {self.packets:,} packets and {self.secrets:,} key log lines written "
                f"to {self.path}")

    def close(self) -> None:
        if self._file.closed:
            return
        self._release(float("inf"))  # type: ignore[arg-type]
        self._file.close()
