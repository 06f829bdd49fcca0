"""The release agent's glue: an expire command decides as of its own moment, a release run
as of its start."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import agents.release_service as release_service
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


class RecordingStep:
    def __init__(self) -> None:
        self.replayed: list[str] = []

    def replay(self, key: str, book: Any, cause: str) -> int:
        self.replayed.append(key)
        return 0

    def record(self, key: str, outcome: Any) -> None:
        return None

    async def flush(self, events_first: bool = False) -> None:
        return None


class Runs:
    """The run reports of one partition (tables.releases.ReleaseRuns' part of it)."""

    def __init__(self, report: dict[str, Any] | None) -> None:
        self.report = report

    def part(self, run_id: str, partition: int) -> dict[str, Any] | None:
        return self.report

    def prune(self, partition: int) -> None:
        return None

    def put_part(self, report: dict[str, Any]) -> None:
        self.report = report

    def last_completed(self, partition: int) -> None:
        return None

    def set_last_completed(self, partition: int, day: date, run_id: str) -> None:
        return None


def release_moments(monkeypatch: pytest.MonkeyPatch, report: dict[str, Any] | None,
                    clock: datetime) -> tuple[dict[str, list[datetime]], RecordingStep, dict[str, Any]]:
    """Run ``release_partition`` on one book with the clock at ``clock`` and ``report`` as
    the run's stored report; returns the moments expiry, allocation and the counts were
    decided as of."""
    asked: dict[str, list[datetime]] = {"expire": [], "allocate": [], "counts": []}

    class Book:
        sku = "S-1"

        def expire(self, supply: Any, policy: Any, now: datetime, cause: str | None = None) -> Any:
            asked["expire"].append(now)
            return SimpleNamespace(changed=(), rewrite=(), events=[])

    def allocate(book: Any, release_date: date, atp: int, policy: Any, now: datetime,
                 cause: str | None = None) -> Any:
        asked["allocate"].append(now)
        return SimpleNamespace(changed=(), rewrite=(), events=[], to_order=[])

    monkeypatch.setattr(release_service, "allocate_release", allocate)
    monkeypatch.setattr(release_service, "supply_for",
                        lambda runtime, key, sku, category: SimpleNamespace(current_atp=5))
    service = object.__new__(ReleaseService)
    service.clock = lambda: clock
    service.tz = ZoneInfo("UTC")
    service.policy = None  # type: ignore[assignment]
    service.runs = Runs(report)  # type: ignore[assignment]
    service.runtime = SimpleNamespace(  # type: ignore[assignment]
        app=SimpleNamespace(rebalancing_count=1, conf=SimpleNamespace(canonical_url="http://w1"))
    )
    service.store = SimpleNamespace(  # type: ignore[assignment]
        books=lambda partition: SimpleNamespace(books={"S-1|DC-1": Book()}, categories={})
    )
    step = RecordingStep()
    service._step = lambda partition: step  # type: ignore[method-assign,assignment,return-value]

    def counts(partition: int, release_date: date, started: datetime) -> dict[str, Any]:
        asked["counts"].append(started)
        return {}

    service._counts = counts  # type: ignore[method-assign]
    command = {"type": "release", "runId": "rel-1", "date": "2031-05-05", "trigger": "manual"}
    asyncio.run(service.release_partition(3, command))
    final = service.runs.report  # type: ignore[attr-defined]
    return asked, step, final


def test_a_release_run_decides_as_of_its_start_and_a_resumed_attempt_as_of_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's expiry and allocation (and its counts) are decided as of its
    ``startedAt``: a resumed attempt — its first one killed, its writes maybe lost — makes
    the same decisions and stamps the same ``at`` as the first, hours later or not."""
    first = datetime(2031, 5, 5, 2, 0, tzinfo=UTC)
    asked, step, report = release_moments(monkeypatch, None, first)
    assert asked == {"expire": [first], "allocate": [first], "counts": [first, first]}
    assert report["startedAt"] == "2031-05-05T02:00:00Z" and report["attempts"] == 1
    assert report["state"] == "completed" and step.replayed == []

    later = datetime(2031, 5, 5, 9, 30, tzinfo=UTC)  # the resumed attempt, after a kill
    report.update(state="interrupted", finishedAt=None)
    asked, step, report = release_moments(monkeypatch, report, later)
    assert asked == {"expire": [first], "allocate": [first], "counts": [first, first]}
    assert report["attempts"] == 2 and report["startedAt"] == "2031-05-05T02:00:00Z"
    assert step.replayed == ["S-1|DC-1"]  # its recorded events are sent again
