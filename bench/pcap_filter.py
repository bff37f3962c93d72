"""The pcap model on a busy interface: how many packets per second loopback carries while
`ecapture tls -m pcap -i lo FILTER` runs, when the filter matches 1% of them, for each
checkout, in the same run.

usage: python bench/pcap_filter.py [--seconds 5] [--senders 2] [--rounds 3] [--ecapture DIR]...

Root + bcc. A flood of small UDP datagrams over 127.0.0.1 (--senders processes, each
sending as fast as it can for --seconds): 1 in 100 goes to port 9 (the one the filter
``udp port 9`` matches), the rest to port 7. A receiver counts what arrives. Each row is the
best of --rounds: datagrams per second received, uncaptured and while each checkout's
``ecapture tls -m pcap -i lo -w FILE udp port 9`` runs, with the ratio to uncaptured and the
packets that checkout wrote to its pcapng against the matching ones sent. A checkout that
filters in the kernel copies out only the matching 1%; one that filters in user space copies
every packet. Figures only, no thresholds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import subprocess
import sys
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ForeignWatch,
    capture,
    checkouts,
    fmt_int,
    print_table,
    require_root,
    scratch_dir,
)

MATCH_PORT, OTHER_PORT = 9, 7
EVERY = 100  # one datagram in EVERY matches the filter


def _send(seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 32
    sent = matching = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(EVERY - 1):
            s.sendto(payload, ("127.0.0.1", OTHER_PORT))
        s.sendto(payload, ("127.0.0.1", MATCH_PORT))
        sent += EVERY
        matching += 1
    out.put((sent, matching))


def _receive(stop: EventType, out: multiprocessing.Queue[int]) -> None:
    socks = []
    for port in (MATCH_PORT, OTHER_PORT):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        s.bind(("127.0.0.1", port))
        s.settimeout(0.2)
        socks.append(s)
    got = 0
    while not stop.is_set():
        for s in socks:
            try:
                while True:
                    s.recv(64, socket.MSG_DONTWAIT)
                    got += 1
            except (BlockingIOError, TimeoutError):
                pass
        time.sleep(0.0005)
    out.put(got)


def flood(seconds: float, senders: int) -> tuple[float, int, int]:
    """(datagrams received per second, datagrams sent, matching datagrams sent)."""
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    stop = multiprocessing.Event()
    rx = multiprocessing.Process(target=_receive, args=(stop, out))
    rx.start()
    time.sleep(0.3)
    txs = [multiprocessing.Process(target=_send, args=(seconds, out)) for _ in range(senders)]
    start = time.monotonic()
    for p in txs:
        p.start()
    for p in txs:
        p.join()
    took = time.monotonic() - start
    totals = [out.get() for _ in txs]
    time.sleep(0.3)
    stop.set()
    got = out.get()
    rx.join()
    return got / took, sum(t[0] for t in totals), sum(t[1] for t in totals)


def packets_in(pcap: Path) -> int:
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True).stdout
    return len(out.split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ecapture", action="append", metavar="DIR")
    args = ap.parse_args()
    require_root()
    watch = ForeignWatch()
    rows = []
    with scratch_dir("ecapture-pcap-bench-") as tmp:
        base = max(flood(args.seconds, args.senders)[0] for _ in range(args.rounds))
        watch.check("uncaptured")
        rows.append(["uncaptured", f"{base:,.0f}", "1.00", "-", "-"])
        for label, path in checkouts(args.ecapture):
            best, sent_match, written = 0.0, 0, 0
            for n in range(args.rounds):
                pcap = tmp / f"{label}-{n}.pcapng"
                with capture(path, ["tls", "-m", "pcap", "-i", "lo", "-w", str(pcap), "udp",
                                    "port", str(MATCH_PORT)]) as cap:
                    rate, _, matching = flood(args.seconds, args.senders)
                    watch.check(label, [cap.pid])
                if rate > best:
                    best, sent_match, written = rate, matching, packets_in(pcap)
            rows.append([label, f"{best:,.0f}", f"{best / base:.2f}", fmt_int(sent_match),
                         fmt_int(written)])
    print_table(["run", "datagrams/s", "ratio", "matching sent", "in pcapng"], rows)
    for note in watch.notes:
        print(note)


if __name__ == "__main__":
    main()
