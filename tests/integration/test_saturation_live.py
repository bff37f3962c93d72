"""Lossless at saturation: clients write as fast as they can while ecapture records, and
the recording holds every write; the summary's counts agree with the recording's."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from live_helpers import PROGRAMS, ROOT

from ecapture.events import TlsData
from ecapture.testing.replay import replay_events

sys.path.insert(0, str(PROGRAMS))
from tls_flood import RECORD, tag  # noqa: E402

pytestmark = [pytest.mark.ecapture_module("tls"), pytest.mark.requires_lib("libssl.so.3")]

CLIENTS = 2
WRITES = 5003  # a prime, per client


def test_saturating_writers_lose_nothing(capture, cert: tuple[str, str]) -> None:
    cap = capture("-m", "json")  # printing JSON of every write: the output lags, not the record
    out = subprocess.run([sys.executable, str(PROGRAMS / "tls_flood.py"), *cert, str(CLIENTS),
                          str(WRITES)], check=True, capture_output=True, text=True,
                         timeout=600).stdout
    result = json.loads(out)
    cap.stop(timeout=300)
    assert result["received"] == result["sent"] == CLIENTS * WRITES * RECORD

    assert cap.record is not None
    info = subprocess.run([sys.executable, "-m", "ecapture", "info", str(cap.record)],
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert re.search(r"^events:\s+\d+ \(0 lost\)$", info, re.M), info

    writes = [e for e in replay_events(cap.record)
              if isinstance(e, TlsData) and e.pid in result["pids"] and e.direction == "write"]
    tags = {e.data[:len(tag(9, 0))] for e in writes}
    expected = {tag(c, n) for c in range(1, CLIENTS + 1) for n in range(WRITES)}
    assert len(writes) == CLIENTS * WRITES
    assert tags == expected
    assert all(len(e.data) == RECORD and e.missing == 0 for e in writes)

    # The summary on stderr tells the same counts the recording holds.
    err = cap.err_path.read_text()
    recorded = re.search(r"recorded ([\d,]+) events, ([\d,]+) lost", err)
    assert recorded, err
    total = int(re.search(r"^events:\s+(\d+)", info, re.M).group(1))  # type: ignore[union-attr]
    assert int(recorded.group(1).replace(",", "")) == total
    assert recorded.group(2) == "0"
    assert re.search(rf"summary: {total:,} events \(.*\) in [\d.]+ s, 0 lost", err), err
