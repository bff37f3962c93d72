"""Golden replays: every recording in fixtures/recordings (captured live by the tool
itself) replays to exactly the expected text beside it. ``--update-golden`` rewrites the
expected files from the recordings."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ecapture.cli import main
from ecapture.testing.replay import replay_text

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = sorted(p for p in (ROOT / "fixtures" / "recordings").rglob("*.ecap")
                    if p.parent.name != "format")


MODELS = {"text": ".expected.txt", "json": ".expected.jsonl", "keylog": ".expected.keylog"}


def test_there_are_golden_recordings() -> None:
    names = {p.stem for p in RECORDINGS}
    assert {"curl_http11", "python_upload_1mib", "curl_http2", "python_keepalive"} <= names


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.stem)
def test_replay_matches_expected(recording: Path, model: str,
                                 request: pytest.FixtureRequest) -> None:
    expected = recording.with_suffix(MODELS[model])
    text = replay_text(recording, model=model)
    if request.config.getoption("--update-golden"):
        expected.write_text(text)
    assert expected.exists(), f"{expected.name} missing: run pytest --update-golden"
    assert text == expected.read_text()


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.stem)
def test_json_lines_parse(recording: Path) -> None:
    lines = recording.with_suffix(".expected.jsonl").read_text().splitlines()
    assert lines
    for line in lines:
        assert isinstance(json.loads(line)["type"], str)
    if shutil.which("jq"):
        subprocess.run(["jq", "-e", ".type"], input="\n".join(lines), text=True, check=True,
                       capture_output=True)


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
