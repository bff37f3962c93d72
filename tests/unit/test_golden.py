"""Golden replays: every recording in fixtures/recordings (captured live by the tool
itself) replays to exactly the expected text beside it. ``--update-golden`` rewrites the
expected files from the recordings."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecapture.cli import main
from ecapture.testing.replay import replay_text

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = sorted(p for p in (ROOT / "fixtures" / "recordings").rglob("*.ecap")
                    if p.parent.name != "format")


def test_there_are_golden_recordings() -> None:
    names = {p.stem for p in RECORDINGS}
    assert {"curl_http11", "python_upload_1mib"} <= names


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.stem)
def test_replay_matches_expected(recording: Path, request: pytest.FixtureRequest) -> None:
    expected = recording.with_suffix(".expected.txt")
    text = replay_text(recording)
    if request.config.getoption("--update-golden"):
        expected.write_text(text)
    assert expected.exists(), f"{expected.name} missing: run pytest --update-golden"
    assert text == expected.read_text()


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.stem)
def test_cli_replay_prints_the_same(recording: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert main(["replay", str(recording)]) == 0
    finally:
        monkeypatch.undo()
        time.tzset()
    assert capsys.readouterr().out == recording.with_suffix(".expected.txt").read_text()
