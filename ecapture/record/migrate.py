"""Upgrade the metadata of recordings written in older format versions.

Layer rule: pure functions over the metadata dict; no I/O, no payload decoding.

Each step converts version N to N+1 and is never edited once released, so that a file of
any old version walks the chain to the current one. When FORMAT_VERSION is bumped, add one
step here and one fixture under fixtures/recordings/format/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ecapture.errors import RecordFormatError
from ecapture.record.format import FORMAT_VERSION

Metadata = dict[str, Any]

OLDEST_VERSION = 1  # the first released format; nothing older ever existed



def _v1_to_v2(metadata: Metadata) -> Metadata:
    """Format 2 added FACT frames (what the live layer learned from /proc); version 1 files
    have none (they recorded such lookups as forged kernel events, which still decode), so
    their metadata means the same."""
    return metadata


# STEPS[N] turns version-N metadata into version-(N+1) metadata.
STEPS: dict[int, Callable[[Metadata], Metadata]] = {1: _v1_to_v2}


def check_version(version: int) -> None:
    """Raise RecordFormatError unless files of this format version can be read."""
    if version < OLDEST_VERSION:
        raise RecordFormatError(
            f"format version {version} is too old (the oldest readable is {OLDEST_VERSION})"
        )
    if version > FORMAT_VERSION:
        raise RecordFormatError(
            f"format version {version} was written by a newer ecapture "
            f"(this one reads up to {FORMAT_VERSION}); upgrade ecapture"
        )


def migrate(version: int, metadata: Metadata) -> Metadata:
    """The metadata of a version-``version`` file, as the current format describes it."""
    check_version(version)
    while version < FORMAT_VERSION:
        step = STEPS.get(version)
        if step is None:  # a bug in this module, not in the file
            raise RecordFormatError(f"no conversion from format version {version}")
        metadata = step(metadata)
        version += 1
    return metadata
