"""The release agent's glue: an expire command decides as of its own moment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from agents.release_service import ReleaseService, Step


class QuietStep:
    async def flush(self, events_first: bool = False) -> None:
        return None


def expiries_of(command: dict[str, Any]) -> list[tuple[str | None, datetime | None]]:
    """What ``apply`` asks ``expire_partition`` for (its cause and its moment)."""
    service = object.__new__(ReleaseService)
    service.clock = lambda: datetime(2031, 5, 5, tzinfo=UTC)
    asked: list[tuple[str | None, datetime | None]] = []

    def expire(partition: int, out: Step, cause: str | None = None,
               now: datetime | None = None) -> int:
        asked.append((cause, now))
        return 0

    service._step = lambda partition: QuietStep()  # type: ignore[method-assign,assignment,return-value]
    service.expire_partition = expire  # type: ignore[method-assign]
    asyncio.run(service.apply(3, command))
    return asked


def test_an_expire_command_decides_at_its_own_moment_not_the_clocks() -> None:
    """A replayed expire command (a kill before its offset was committed) must decide and
    stamp its EXPIRED events as the first time: as of its ``at``."""
    assert expiries_of({"type": "expire", "at": "2030-01-02T03:04:05.000006Z"}) == [
        ("expire@2030-01-02T03:04:05.000006Z", datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    ]
    # an unreadable or missing moment: the clock's (the expire_partition default)
    assert expiries_of({"type": "expire", "at": "not a time"}) == [("expire@not a time", None)]
    assert expiries_of({"type": "expire"}) == [("expire@None", None)]
