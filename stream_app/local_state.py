"""Local table state and unclean stops: after one, the changelog is the only truth.

Faust writes a table value into RocksDB at once and produces its changelog message
later; a kill -9 in between leaves local state AHEAD of the changelog (FAUST-NOTES).
Such a worker would decide from state no other worker can rebuild, and a replayed input
would find its own half-announced effects already there. So, as Kafka Streams does after
an unclean shutdown, a worker that finds the marker of a worker that did not stop cleanly
discards its local table data before Faust opens it, and rebuilds every table from its
changelog. Together with "changelog on the broker before any announcement"
(:mod:`agents.delivery`) and replays that re-send what is recorded
(:mod:`stream_app.domain.reservations`), a restart after any crash ends in the state and
outputs of a run without it. A clean stop keeps local state: the next start reads only
the changelog's tail.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def marker_path(tabledir: Path) -> Path:
    return tabledir.with_name(f"{tabledir.name}.running")


def claim_local_state(tabledir: Path) -> bool:
    """Call before the worker opens its tables. Discards ``tabledir`` when the previous
    worker did not stop cleanly (its marker is still there); then marks this one as
    running. Returns whether local state was discarded."""
    marker = marker_path(tabledir)
    discarded = False
    if marker.exists():
        if tabledir.exists():
            shutil.rmtree(tabledir)
            discarded = True
            log.warning(
                "the last worker on %s did not stop cleanly: local table state discarded, "
                "every table is rebuilt from its changelog",
                tabledir,
            )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{os.getpid()}\n")
    return discarded


def release_local_state(tabledir: Path) -> None:
    """After a clean stop (tables closed, producer flushed): the next start keeps local
    state and reads only the changelog's tail."""
    marker_path(tabledir).unlink(missing_ok=True)
