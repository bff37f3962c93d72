"""Shared pytest set-up: hypothesis profiles. The --update-golden and --regen-fixtures flags,
the markers and the recording/golden/live_capture fixtures come from the ecapture pytest
plugin (ecapture/testing/plugin.py), which the package installs."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# pytester: tests/unit/test_plugin.py runs the ecapture plugin in fresh pytest sessions.
pytest_plugins = ("pytester",)

# No deadline anywhere: these tests check behaviour, not speed (bench/ has the figures),
# and a busy machine made the 200 ms default fail decoders that were merely descheduled.
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

