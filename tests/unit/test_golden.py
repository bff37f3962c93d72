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
from ecapture.testing.plugin import GOLDEN_MODELS, Golden
from ecapture.testing.replay import replay_text

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = sorted(p for p in (ROOT / "fixtures" / "recordings").rglob("*.ecap")
                    if p.parent.name != "format")


MODELS = GOLDEN_MODELS


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_every_recording_has_text_and_json_goldens(path: Path) -> None:
    # (tests/unit/test_filters.py checks that every registered module has a recording)
    for model in ("text", "json"):
        assert path.with_suffix(MODELS[model]).exists(), f"{path.name}: no {model} golden"


def models_of(path: Path) -> list[str]:
    """text and json for every recording; keylog where the fixture has one (TLS)."""
    return ["text", "json", *(["keylog"] if path.with_suffix(MODELS["keylog"]).exists() else [])]


@pytest.mark.parametrize(("path", "model"), [(p, m) for p in RECORDINGS for m in models_of(p)],
                         ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_replay_matches_expected(path: Path, model: str, golden: Golden) -> None:
    golden.check(replay_text(path, model=model), path.with_suffix(MODELS[model]))


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
