"""Local table state and unclean stops.

Faust writes a table value into RocksDB at once and produces its changelog message
later; a kill -9 in between leaves local state AHEAD of the changelog (FAUST-NOTES). A
worker marks its table directory as in use while it runs and clears the mark on a clean
stop, so the next start knows which case it is in:

* by default local state is kept after an unclean stop. Every replayed input that finds
  its effect already applied writes it again (the reservations a replayed cause touched,
  the inventory buckets a replayed record touches), so the changelog catches up with what
  the restarted worker holds before anything else depends on it;
* with ``STREAM_APP_DISCARD_LOCAL_STATE_AFTER_CRASH`` the local tables are deleted and
  rebuilt from their changelogs, as Kafka Streams does after an unclean shutdown: nothing
  a dead worker held that the changelog lacks can survive (also after the partition moved
  to another worker and back). Off by default because of a Faust loss seen with it: a
  worker rebuilding at start-up lost release commands fetched during its recovery
  (docs/reliability.md).

A clean stop keeps local state: the next start reads only the changelog's tail.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def marker_path(tabledir: Path) -> Path:
    return tabledir.with_name(f"{tabledir.name}.running")


def claim_local_state(tabledir: Path, *, discard: bool) -> bool:
    """Call before the worker opens its tables. With ``discard``, deletes ``tabledir`` when
    the previous worker did not stop cleanly (its marker is still there); then marks this
    one as running. Returns whether local state was discarded."""
    marker = marker_path(tabledir)
    discarded = False
    if marker.exists() and not discard:
        if tabledir.exists():
            log.warning(
                "the last worker on %s did not stop cleanly: local table state is kept "
                "(replays rewrite what they find already applied)",
                tabledir,
            )
    elif marker.exists():
        if discard_local_state(tabledir):
            discarded = True
            log.warning(
                "the last worker on %s did not stop cleanly: local table state discarded, "
                "every table is rebuilt from its changelog",
                tabledir,
            )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{os.getpid()}\n")
    return discarded


def discard_local_state(tabledir: Path) -> bool:
    """Delete the local tables (every table is then rebuilt from its changelog); returns
    whether there were any."""
    if not tabledir.exists():
        return False
    shutil.rmtree(tabledir)
    return True


def release_local_state(tabledir: Path) -> None:
    """After a clean stop (tables closed, producer flushed): the next start keeps local
    state and reads only the changelog's tail."""
    marker_path(tabledir).unlink(missing_ok=True)
