"""Release scheduling (due date, catch-up), what a run counts, merging partition reports."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.book import ReservationBook
from stream_app.domain.future_atp import Supply
from stream_app.domain.ids import reservation_id
from stream_app.domain.preorders import ItemRequest, Policy
from stream_app.domain.release import (
    allocate_release,
    catch_up_needed,
    due_release_date,
    merge_run_reports,
    order_created,
    order_failed,
    release_date_at,
    release_report,
    released_by_run,
)

PARIS = ZoneInfo("Europe/Paris")
NIGHTLY = "0 2 * * *"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_release_date_is_today_in_the_release_timezone() -> None:
    assert release_date_at(at("2030-02-01T23:30:00+00:00"), UTC) == date(2030, 2, 1)
    assert release_date_at(at("2030-02-01T23:30:00+00:00"), PARIS) == date(2030, 2, 2)


def test_due_date_before_and_after_the_nightly_time() -> None:
    assert due_release_date(NIGHTLY, UTC, at("2030-02-01T01:59:59+00:00")) == date(2030, 1, 31)
    assert due_release_date(NIGHTLY, UTC, at("2030-02-01T02:00:00+00:00")) == date(2030, 2, 1)
    assert due_release_date(NIGHTLY, UTC, at("2030-02-01T02:00:40+00:00")) == date(2030, 2, 1)
    assert due_release_date(NIGHTLY, UTC, at("2030-02-01T23:00:00+00:00")) == date(2030, 2, 1)


def test_due_date_uses_the_wall_clock_of_the_timezone() -> None:
    # 02:00 in Paris is 01:00 UTC in winter
    assert due_release_date(NIGHTLY, PARIS, at("2030-02-01T00:59:00+00:00")) == date(2030, 1, 31)
    assert due_release_date(NIGHTLY, PARIS, at("2030-02-01T01:00:00+00:00")) == date(2030, 2, 1)
    # and 00:00 UTC in summer
    assert due_release_date(NIGHTLY, PARIS, at("2030-07-01T00:00:00+00:00")) == date(2030, 7, 1)


def test_due_date_of_a_weekly_schedule_is_its_last_run() -> None:
    # Mondays 02:00; 2030-02-06 is a Wednesday → the Monday before
    assert due_release_date("0 2 * * 1", UTC, at("2030-02-06T12:00:00+00:00")) == date(2030, 2, 4)


def test_catch_up_after_missed_nights_only() -> None:
    due = date(2030, 2, 1)
    assert catch_up_needed(None, due)
    assert catch_up_needed(date(2030, 1, 29), due)  # three nights missed: one release covers them
    assert not catch_up_needed(due, due)
    assert not catch_up_needed(date(2030, 2, 3), due)  # an admin ran a later scheduled date


@settings(max_examples=200, deadline=None)
@given(
    minutes=st.integers(0, 60 * 24 * 400),
    tz=st.sampled_from([UTC, PARIS, ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")]),
)
def test_due_date_is_never_in_the_future_and_at_most_a_day_old(minutes: int, tz: Any) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    due = due_release_date(NIGHTLY, tz, now)
    today = release_date_at(now, tz)
    assert today - timedelta(days=1) <= due <= today


# --- what a run counts --------------------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SHIP = date(2030, 2, 1)
POLICY = Policy(commit_required=False)


def book_with(orders: list[tuple[str, str]], supply: int = 10) -> ReservationBook:
    book = ReservationBook("PS6", "DC1")
    for order, tier in orders:
        request = ItemRequest(order, 0, f"C-{order}", "x@example.com", tier, SHIP, "PS6", "DC1", 1)
        book.place(request, Supply(supply, (), 1.0), POLICY, NOW)
    return book


def rid(order: str) -> str:
    return reservation_id(order, "PS6", "DC1", 0)


def test_counts_of_a_resumed_run_cover_both_attempts() -> None:
    book = book_with([("A", "VIP"), ("B", "STANDARD"), ("C", "STANDARD"), ("D", "STANDARD")])
    started = datetime(2030, 2, 1, 2, 0, tzinfo=UTC)
    first = allocate_release(book, SHIP, 2, POLICY, started)
    assert [r.order_id for r in first.to_order] == ["A", "B"]
    order_created(book, rid("A"), started + timedelta(seconds=1))
    # crash; the resumed attempt only sees B still to order
    resumed = allocate_release(book, SHIP, 2, POLICY, started + timedelta(minutes=5))
    assert [r.order_id for r in resumed.to_order] == ["B"]
    order_failed(book, rid("B"), "HTTP 503", started + timedelta(minutes=5))
    counted = [r for r in book.reservations() if released_by_run(r, started)]
    report = release_report(SHIP, counted)
    assert report["totals"] == {
        "CANCELLED_INSUFFICIENT_INVENTORY": 2, "CONFIRMED": 1, "RELEASE_FAILED": 1,
    }
    assert report["byTier"]["VIP"] == {"CONFIRMED": 1}
    # a later run counts nothing of this one
    later = started + timedelta(days=1)
    assert not [r for r in book.reservations() if released_by_run(r, later)]


def test_customer_cancellations_during_a_run_are_not_release_outcomes() -> None:
    book = book_with([("A", "STANDARD"), ("B", "STANDARD")])
    started = NOW + timedelta(hours=1)
    book.cancel(rid("B"), Supply(10, (), 1.0), POLICY, started + timedelta(seconds=1))
    allocate_release(book, SHIP, 5, POLICY, started + timedelta(seconds=2))
    counted = {r.order_id for r in book.reservations() if released_by_run(r, started)}
    assert counted == {"A"}


# --- merging partition reports ----------------------------------------------------------------


def part(partition: int, state: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "runId": "rel-1", "partition": partition, "releaseDate": "2030-02-01",
        "trigger": "nightly", "requestedAt": "2030-02-01T02:00:00Z", "state": state,
        "attempts": 1, "books": 1,
        "orders": {"toOrder": 0, "created": 0, "alreadyExisted": 0, "failed": 0},
        "failures": [], "counts": {},
        "startedAt": "2030-02-01T02:00:01Z", "finishedAt": None, "updatedAt": "2030-02-01T02:00:01Z",
    }
    base.update(kw)
    return base


def test_merge_sums_counts_and_waits_for_every_partition() -> None:
    p0 = part(
        0, "completed", finishedAt="2030-02-01T02:00:05Z",
        orders={"toOrder": 2, "created": 2, "alreadyExisted": 0, "failed": 0},
        counts={"totals": {"CONFIRMED": 2}, "units": {"CONFIRMED": 3},
                "byTier": {"VIP": {"CONFIRMED": 2}}},
    )
    p1 = part(
        1, "ordering",
        orders={"toOrder": 3, "created": 1, "alreadyExisted": 0, "failed": 0},
        counts={"totals": {"CONFIRMING": 3, "CANCELLED_INSUFFICIENT_INVENTORY": 1},
                "units": {"CONFIRMING": 3, "CANCELLED_INSUFFICIENT_INVENTORY": 1},
                "byTier": {"STANDARD": {"CONFIRMING": 3, "CANCELLED_INSUFFICIENT_INVENTORY": 1}}},
    )
    running = merge_run_reports("rel-1", [p0, p1], partitions=2)
    assert running is not None
    assert running["state"] == "running" and running["partitionsDone"] == 1
    assert running["finishedAt"] is None and running["durationSeconds"] is None
    assert running["orders"] == {"toOrder": 5, "created": 3, "alreadyExisted": 0, "failed": 0}

    p1_done = part(
        1, "completed", finishedAt="2030-02-01T02:00:09Z", attempts=2,
        orders={"toOrder": 3, "created": 2, "alreadyExisted": 0, "failed": 1},
        failures=[{"reservationId": "R-x", "error": "HTTP 503"}],
        counts={"totals": {"CONFIRMED": 2, "RELEASE_FAILED": 1, "CANCELLED_INSUFFICIENT_INVENTORY": 1},
                "units": {"CONFIRMED": 2, "RELEASE_FAILED": 1, "CANCELLED_INSUFFICIENT_INVENTORY": 1},
                "byTier": {"STANDARD": {"CONFIRMED": 2, "RELEASE_FAILED": 1,
                                        "CANCELLED_INSUFFICIENT_INVENTORY": 1}}},
    )
    # an older copy of partition 1 (from another worker) loses to the more advanced one
    done = merge_run_reports("rel-1", [p1_done, p0, p1], partitions=2)
    assert done is not None
    assert done["state"] == "completed_with_failures"
    assert done["totals"] == {"CANCELLED_INSUFFICIENT_INVENTORY": 1, "CONFIRMED": 4, "RELEASE_FAILED": 1}
    assert done["units"]["CONFIRMED"] == 5
    assert done["byTier"] == {
        "STANDARD": {"CANCELLED_INSUFFICIENT_INVENTORY": 1, "CONFIRMED": 2, "RELEASE_FAILED": 1},
        "VIP": {"CONFIRMED": 2},
    }
    assert done["reservations"] == 6
    assert done["durationSeconds"] == 8.0
    assert done["failures"] == [{"reservationId": "R-x", "error": "HTTP 503"}]
    assert [p["partition"] for p in done["partitions"]] == [0, 1]
    assert done["partitions"][1]["attempts"] == 2


def test_merge_of_skipped_and_unknown_runs() -> None:
    skipped = [part(0, "skipped", finishedAt="2030-02-01T02:00:02Z"),
               part(1, "skipped", finishedAt="2030-02-01T02:00:02Z")]
    merged = merge_run_reports("rel-1", skipped, partitions=2)
    assert merged is not None and merged["state"] == "skipped"
    assert merge_run_reports("rel-2", skipped, partitions=2) is None
