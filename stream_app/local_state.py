"""Local table state and unclean stops.

Faust writes a table value into RocksDB at once and produces its changelog message
later; a kill -9 in between leaves local state AHEAD of the changelog (FAUST-NOTES). A
worker marks its table directory as in use while it runs and clears the mark on a clean
stop, so the next start knows which case it is in:

* by default local state is kept after an unclean stop. Every replayed input that finds
  its effect already applied writes it again (the reservations a replayed cause touched),
  so the changelog catches up with what the restarted worker holds before anything else
  depends on it. Per-key tables (tables.keyed) write their changelog BEFORE local state,
  so theirs is never ahead: reading the changelog's tail restores them;
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
from collections.abc import Callable
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


#: where Faust's RocksDB store keeps the last changelog offset a partition's DB holds
FAUST_OFFSET_KEY = b"__faust\0offset__"


def local_partitions(tabledir: Path) -> dict[tuple[str, int], Path]:
    """``(table, partition)`` → RocksDB directory of every table partition held locally."""
    found: dict[tuple[str, int], Path] = {}
    if not tabledir.is_dir():
        return found
    for path in tabledir.iterdir():
        name, _, rest = path.name.rpartition("-")
        if path.is_dir() and name and rest.endswith(".db") and rest[:-3].isdigit():
            found[(name, int(rest[:-3]))] = path
    return found


def persisted_offset(path: Path) -> int | None:
    """The changelog offset Faust recorded in a partition's DB (None: none recorded)."""
    from rocksdict import AccessType, Rdict

    db = Rdict(str(path), access_type=AccessType.read_only())
    try:
        raw = db.get(FAUST_OFFSET_KEY)
    finally:
        db.close()
    return int(raw) if raw is not None else None


def overtaken(persisted: dict[tuple[str, int], int | None], ends: dict[tuple[str, int], int]) -> list[tuple[str, int]]:
    """The table partitions whose changelog holds records after the last one this worker
    wrote or read (end offset − 1 > persisted offset): another worker owned them while
    this one was down. Their local state may keep writes the changelog never got (this
    worker's, cut by the kill) that the other owner's records do not overwrite, so they
    are rebuilt from the changelog. A partition nobody wrote since keeps its local state:
    the replay rewrites what it finds applied (rule 2 of docs/reliability.md)."""
    stale: list[tuple[str, int]] = []
    for key, end in sorted(ends.items()):
        mine = persisted.get(key)
        if key in persisted and end - 1 > (-1 if mine is None else mine):
            stale.append(key)
    return stale


def discard_overtaken(
    tabledir: Path,
    ends_of: Callable[[list[tuple[str, int]]], dict[tuple[str, int], int]],
    keep: set[str] | frozenset[str] = frozenset(),
) -> list[tuple[str, int]]:
    """After an unclean stop with local state kept: delete the local DB of every table
    partition another worker wrote meanwhile (:func:`overtaken`); returns them.
    ``ends_of`` gives the changelog end offsets of ``(table, partition)`` pairs. Tables
    named in ``keep`` are never ahead of their changelog: their tail is read instead."""
    local = {key: path for key, path in local_partitions(tabledir).items() if key[0] not in keep}
    if not local:
        return []
    persisted = {key: persisted_offset(path) for key, path in local.items()}
    stale = overtaken(persisted, ends_of(sorted(local)))
    for key in stale:
        shutil.rmtree(local[key])
        log.warning(
            "table %s partition %d: another worker wrote its changelog while this one was "
            "down; its local state is discarded and rebuilt from the changelog", *key,
        )
    return stale
