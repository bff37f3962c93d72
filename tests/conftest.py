"""Shared pytest set-up: hypothesis profiles and the golden/fixture regeneration flags."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50)
settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite expected outputs beside the recordings from the recordings")
    parser.addoption("--regen-fixtures", action="store_true",
                     help="live tests that produce fixture recordings save them into "
                          "fixtures/recordings and rewrite their expected outputs")
