"""Ranked lists of one queue (one SKU/location and ship date) of the reservation book:
per-tier sorted lists of sequences, so a rank is a bisect plus the sizes of the higher
tiers, and the recorder of position changes. Used by :mod:`.book` only."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from datetime import date, datetime

from stream_app.domain.model import (
    EventType,
    Reservation,
    Status,
)


class Ranked:
    """Sequences of one status group of one queue in priority order.

    One sorted list of sequences per tier score: arrivals append at the end of their
    tier's list; the rank is the size of the higher tiers plus a bisect.
    """

    __slots__ = ("_buckets", "_scores", "_size")

    def __init__(self) -> None:
        self._buckets: dict[int, list[int]] = {}
        self._scores: list[int] = []  # descending: highest priority first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _bucket(self, score: int) -> list[int]:
        bucket = self._buckets.get(score)
        if bucket is None:
            bucket = self._buckets[score] = []
            self._scores.append(score)
            self._scores.sort(reverse=True)
        return bucket

    def add(self, score: int, sequence: int) -> None:
        bucket = self._bucket(score)
        if not bucket or bucket[-1] < sequence:
            bucket.append(sequence)
        else:
            insort(bucket, sequence)
        self._size += 1

    def remove(self, score: int, sequence: int) -> None:
        bucket = self._buckets[score]
        if bucket and bucket[-1] == sequence:
            bucket.pop()
        else:
            index = bisect_left(bucket, sequence)
            if index == len(bucket) or bucket[index] != sequence:
                raise KeyError((score, sequence))
            del bucket[index]
        self._size -= 1

    def rank(self, score: int, sequence: int) -> int:
        """0-based number of entries before ``(score, sequence)``."""
        ahead = 0
        for other in self._scores:
            if other <= score:
                break
            ahead += len(self._buckets[other])
        return ahead + bisect_left(self._buckets.get(score, []), sequence)

    def in_order(self) -> Iterator[tuple[int, int]]:
        for score in self._scores:
            for sequence in self._buckets[score]:
                yield score, sequence

    def in_reverse(self) -> Iterator[tuple[int, int]]:
        for score in reversed(self._scores):
            for sequence in reversed(self._buckets[score]):
                yield score, sequence

    def reset(self, entries: Iterable[tuple[int, int]]) -> None:
        """Replace the content; ``entries`` in ascending sequence order."""
        self._buckets = {}
        self._scores = []
        self._size = 0
        for score, sequence in entries:
            self._bucket(score).append(sequence)
            self._size += 1


class Queue:
    """All reservations of one ship date (any status) and the ranked lists of the queued."""

    __slots__ = ("by_seq", "last_sequence", "min_expires_at", "reserved", "ship_date", "waitlisted")

    def __init__(self, ship_date: date) -> None:
        self.ship_date = ship_date
        self.last_sequence = 0
        self.by_seq: dict[int, Reservation] = {}
        self.reserved = Ranked()
        self.waitlisted = Ranked()
        self.min_expires_at: datetime | None = None

    @property
    def depth(self) -> int:
        return len(self.reserved) + len(self.waitlisted)

    def ranked(self, status: Status) -> Ranked | None:
        if status is Status.RESERVED:
            return self.reserved
        if status is Status.WAITLISTED:
            return self.waitlisted
        return None

    def position(self, reservation: Reservation) -> int | None:
        """1-based rank: RESERVED first, then WAITLISTED, each by priority key."""
        if reservation.status is Status.RESERVED:
            return self.reserved.rank(reservation.tier_score, reservation.sequence) + 1
        if reservation.status is Status.WAITLISTED:
            rank = self.waitlisted.rank(reservation.tier_score, reservation.sequence)
            return len(self.reserved) + rank + 1
        return None

    def rebuild_ranked(self) -> None:
        ordered = sorted(self.by_seq.values(), key=lambda r: r.sequence)
        self.reserved.reset(
            (r.tier_score, r.sequence) for r in ordered if r.status is Status.RESERVED
        )
        self.waitlisted.reset(
            (r.tier_score, r.sequence) for r in ordered if r.status is Status.WAITLISTED
        )


class Recorder:
    """Collects the changes and events of one operation; positions are filled in at the end."""

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.changed: dict[str, Reservation] = {}
        self.pending: list[tuple[Reservation, EventType, str | None]] = []

    def touch(self, reservation: Reservation) -> None:
        self.changed.setdefault(reservation.reservation_id, reservation)

    def event(
        self, reservation: Reservation, event_type: EventType, reason: str | None = None
    ) -> None:
        self.touch(reservation)
        self.pending.append((reservation, event_type, reason))


POSITIONED = {
    EventType.RESERVED: Status.RESERVED,
    EventType.PROMOTED: Status.RESERVED,
    EventType.WAITLISTED: Status.WAITLISTED,
}

#: above this many status changes in one queue, rebuild its ranked lists once
BULK = 32
