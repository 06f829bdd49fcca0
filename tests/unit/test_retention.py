"""Retention: a book that forgets its finished reservations is the book restored from
the others (same queues, positions, held units, customer units, numbering), and an
order result goes once every decision is older than the cutoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.book import ReservationBook
from stream_app.domain.ids import retention_cutoff
from stream_app.domain.model import FINAL, Status
from tables.reservations import decided_before
from tests.unit.test_reservation_book import NOW, POLICY, SHIP, SHIP2, new_book, req, stock

DAY = timedelta(days=1)


def snapshot(book: ReservationBook) -> dict[str, object]:
    return {
        "ids": sorted(r.reservation_id for r in book.reservations()),
        "queues": {d: book.queue(d) for d in book.ship_dates()},
        "held": dict(book.held_by_date()),
        "customers": {c: book.customer_units(c) for c in {f"C-{n % 3}" for n in range(40)}},
        "header": book.header()["lastSequence"],
    }


ops = st.lists(
    st.tuples(st.sampled_from(["place", "cancel"]), st.integers(0, 39), st.booleans()),
    min_size=1, max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops, supply=st.integers(0, 6), age=st.integers(0, 40))
def test_forgetting_equals_restoring_from_the_rest(ops: list, supply: int, age: int) -> None:
    book = new_book()
    for n, (op, order, late_date) in enumerate(ops):
        at = NOW + timedelta(minutes=n)
        if op == "place":
            item = req(f"O{order}", ship=SHIP2 if late_date else SHIP, customer=f"C-{order % 3}")
            book.place(item, stock(supply), POLICY, at)
        else:
            found = book.order_reservations(f"O{order}")
            if found:
                book.cancel(found[0].reservation_id, stock(supply), POLICY, at)
    before = NOW + timedelta(minutes=age)
    gone = book.prunable(before)
    assert all(r.status in FINAL and not r.holds() and r.updated_at < before for r in gone)
    for ship in book.ship_dates():  # the highest sequence of each queue always stays
        top = max(r.sequence for r in book.reservations() if r.ship_date == ship)
        assert all(not (r.ship_date == ship and r.sequence == top) for r in gone)
    book.forget(gone)
    rest = [r for r in book.reservations()]
    restored = ReservationBook.restore("PS6", "DC1", [r.to_dict() for r in rest])
    assert snapshot(book) == snapshot(restored)
    assert book.prunable(before) == []  # a second prune finds nothing


def test_nothing_holding_units_or_recent_is_pruned() -> None:
    book = new_book()
    kept = book.place(req("O1"), stock(5), POLICY, NOW).reservation
    cancelled = book.place(req("O2"), stock(5), POLICY, NOW).reservation
    book.place(req("O3"), stock(5), POLICY, NOW)  # the queue's highest sequence
    assert kept is not None and cancelled is not None
    book.cancel(cancelled.reservation_id, stock(5), POLICY, NOW)
    assert book.prunable(NOW) == []  # not older than the cutoff
    assert [r.reservation_id for r in book.prunable(NOW + DAY)] == [cancelled.reservation_id]
    assert kept.status is Status.RESERVED


def test_the_cutoff_waits_for_the_export() -> None:
    now = datetime(2031, 3, 1, 3, tzinfo=UTC)
    assert retention_cutoff(now, 30, None) == now - 30 * DAY
    assert retention_cutoff(now, 30, now - 40 * DAY) == now - 40 * DAY  # exports stalled
    assert retention_cutoff(now, 30, now) == now - 30 * DAY


def test_an_order_result_goes_when_every_decision_is_older() -> None:
    old, new = "2030-01-01T00:00:00+00:00", "2030-03-01T00:00:00+00:00"
    cutoff = datetime(2030, 2, 1, tzinfo=UTC)
    entry = {"result": {"success": True}, "decisions": {"0": {"createdAt": old}}}
    assert decided_before(entry, cutoff)
    entry["decisions"]["1"] = {"createdAt": new}
    assert not decided_before(entry, cutoff)
    assert not decided_before({"result": None, "decisions": {"0": {"createdAt": old}}}, cutoff)
