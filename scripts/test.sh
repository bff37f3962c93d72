#!/usr/bin/env bash
# The project's test command: set up (idempotent), then lint, types, unit and live
# integration tests through tox. Run as root so the live tests run; with
# ECAPTURE_REQUIRE_LIVE=1 a live test that cannot run fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tox -e "${TOX_ENVS:-lint,type,unit,integration}" "$@"
