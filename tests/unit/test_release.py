"""Nightly release: priority allocation, expiry, waitlist cancellation, crash-safe two-step
order creation, idempotent reruns, the Fluent order input and the report."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.book import ReservationBook
from stream_app.domain.future_atp import Supply
from stream_app.domain.ids import reservation_id
from stream_app.domain.model import Reservation, Status
from stream_app.domain.preorders import ItemRequest, Policy
from stream_app.domain.release import (
    allocate_release,
    create_order_input,
    fluent_order_ref,
    order_created,
    order_failed,
    release_key,
    release_report,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SHIP = date(2030, 2, 1)
SHIP2 = date(2030, 2, 8)
RELEASE_AT = datetime(2030, 2, 1, 2, 0, tzinfo=UTC)
NO_COMMITS = Policy(commit_required=False)
PLENTY = Supply(1000, (), 1.0)


def req(order: str, tier: str = "STANDARD", quantity: int = 1, ship: date = SHIP) -> ItemRequest:
    return ItemRequest(
        order, 0, f"C-{order}", f"{order}@example.com", tier, ship, "PS6", "DC1", quantity
    )


def rid(order: str) -> str:
    return reservation_id(order, "PS6", "DC1", 0)


def build(
    orders: list[tuple[str, str, int, date]], policy: Policy = NO_COMMITS, supply: Supply = PLENTY
) -> ReservationBook:
    book = ReservationBook("PS6", "DC1")
    for order, tier, quantity, ship in orders:
        book.place(req(order, tier, quantity, ship), supply, policy, NOW)
    return book


def statuses(book: ReservationBook) -> dict[str, tuple[str, str | None]]:
    return {r.order_id: (r.status.value, r.reason) for r in book.reservations()}


def test_confirms_in_priority_order_while_supply_lasts() -> None:
    book = build([("S1", "STANDARD", 1, SHIP), ("S2", "STANDARD", 1, SHIP), ("V1", "VIP", 1, SHIP)])
    outcome = allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT)
    assert statuses(book) == {
        "V1": ("CONFIRMING", None),
        "S1": ("CONFIRMING", None),
        "S2": ("CANCELLED", "insufficient_inventory"),
    }
    assert [r.order_id for r in outcome.to_order] == ["V1", "S1"]
    assert [(e["eventType"], e["orderId"], e.get("reason")) for e in outcome.events] == [
        ("CANCELLED", "S2", "insufficient_inventory")
    ]
    assert book.held_units() == 2  # pending orders still hold their units
    for reservation in outcome.to_order:
        done = order_created(book, reservation.reservation_id, RELEASE_AT)
        assert [e["eventType"] for e in done.events] == ["CONFIRMED"]
    assert statuses(book)["V1"] == ("CONFIRMED", None)
    # ordered in Fluent, not yet out of the warehouse's stock: still held
    assert book.held_units() == 2 and book.unsettled_units() == 2
    # the stock the channels report now reflects the orders: released
    after = RELEASE_AT + timedelta(minutes=5)
    settled = book.settle(after, RELEASE_AT - timedelta(days=1), after)
    assert sorted(r.order_id for r in settled.changed) == ["S1", "V1"]
    assert settled.events == [] and book.held_units() == 0


def test_confirmed_units_are_not_promised_or_released_again_until_the_stock_shows_them() -> None:
    """Issue 10: a release confirmed 20 against 20; a new 5-unit pre-order for the same date
    was RESERVED and the next release confirmed it too: 25 ordered against 20 on hand."""
    book = build([(f"A{i}", "STANDARD", 1, SHIP) for i in range(20)])
    first = allocate_release(book, SHIP, 20, NO_COMMITS, RELEASE_AT)
    for reservation in first.to_order:
        order_created(book, reservation.reservation_id, RELEASE_AT)
    supply = Supply(20, (), 1.0)  # the warehouse feed still reports 20 on hand
    late = book.place(req("LATE", "STANDARD", 5, SHIP), supply, NO_COMMITS, RELEASE_AT)
    assert late.reservation is not None and late.reservation.status is Status.WAITLISTED
    second = allocate_release(book, SHIP, 20, NO_COMMITS, RELEASE_AT + timedelta(hours=1))
    assert second.to_order == []
    assert statuses(book)["LATE"] == ("CANCELLED", "not_allocated")
    # stock reported before the confirmation does not release anything; a grace period does
    assert book.settle(RELEASE_AT - timedelta(seconds=1), RELEASE_AT - timedelta(days=1),
                       RELEASE_AT).changed == []
    assert len(book.settle(None, RELEASE_AT, RELEASE_AT + timedelta(days=1)).changed) == 20
    assert book.held_units() == 0


def test_hold_state_survives_a_restore() -> None:
    book = build([("A", "STANDARD", 1, SHIP), ("B", "STANDARD", 1, SHIP)])
    for reservation in allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT).to_order:
        order_created(book, reservation.reservation_id, RELEASE_AT)
    book.settle(None, RELEASE_AT, RELEASE_AT)  # both settled by the grace period
    a = book.get(rid("A"))
    assert a is not None
    a.settled = False  # as if only B had been settled
    book._unsettled[a.reservation_id] = a  # noqa: SLF001 - building the state under test
    book._held[SHIP] += 1  # noqa: SLF001
    restored = ReservationBook.restore(
        "PS6", "DC1", [Reservation.from_dict(r.to_stored()) for r in book.reservations()]
    )
    assert restored.held_units() == 1 == restored.unsettled_units()


def test_waitlisted_items_of_released_dates_are_cancelled_not_allocated() -> None:
    tight = Supply(1, (), 1.0)
    book = build([("A", "STANDARD", 1, SHIP), ("B", "STANDARD", 1, SHIP)], supply=tight)
    assert book.get(rid("B")).status is Status.WAITLISTED  # type: ignore[union-attr]
    allocate_release(book, SHIP, 5, NO_COMMITS, RELEASE_AT)
    assert statuses(book) == {"A": ("CONFIRMING", None), "B": ("CANCELLED", "not_allocated")}


def test_expired_uncommitted_first_then_allocation() -> None:
    policy = Policy()  # commits required
    book = build(
        [("PAID", "STANDARD", 1, SHIP), ("UNPAID", "VIP", 1, SHIP), ("LATER", "VIP", 1, SHIP2)],
        policy,
    )
    assert book.commit(rid("PAID"), policy, NOW).ok
    outcome = allocate_release(book, SHIP, 10, policy, RELEASE_AT)
    assert [(e["eventType"], e["orderId"]) for e in outcome.events] == [("EXPIRED", "UNPAID")]
    assert statuses(book) == {
        "PAID": ("CONFIRMING", None),
        "UNPAID": ("EXPIRED", "not_committed"),
        "LATER": ("RESERVED", None),  # not released yet
    }


def test_catch_up_releases_every_date_up_to_the_release_date() -> None:
    book = build(
        [
            ("D1", "STANDARD", 1, SHIP),
            ("D2", "PLATINUM", 1, SHIP2),
            ("D3", "VIP", 1, SHIP2 + timedelta(days=1)),
        ]
    )
    allocate_release(book, SHIP2, 1, NO_COMMITS, RELEASE_AT + timedelta(days=7))
    # the earlier ship date was promised first, whatever the tiers
    assert statuses(book) == {
        "D1": ("CONFIRMING", None),
        "D2": ("CANCELLED", "insufficient_inventory"),
        "D3": ("RESERVED", None),
    }


def test_committed_first_policy() -> None:
    policy = Policy(commit_required=False, committed_first=True)
    book = build([("V1", "VIP", 1, SHIP), ("S1", "STANDARD", 1, SHIP)], policy)
    book.commit(rid("S1"), policy, NOW)
    allocate_release(book, SHIP, 1, policy, RELEASE_AT)
    assert statuses(book) == {
        "V1": ("CANCELLED", "insufficient_inventory"),
        "S1": ("CONFIRMING", None),
    }


def test_greedy_smaller_later_items_use_what_is_left() -> None:
    book = build([("BIG", "VIP", 3, SHIP), ("SMALL", "STANDARD", 2, SHIP)])
    allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT)
    assert statuses(book) == {
        "BIG": ("CANCELLED", "insufficient_inventory"),
        "SMALL": ("CONFIRMING", None),
    }


def test_rerun_on_the_same_state_changes_nothing() -> None:
    book = build([("A", "STANDARD", 1, SHIP), ("B", "VIP", 1, SHIP), ("C", "STANDARD", 1, SHIP)])
    first = allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT)
    assert len(first.changed) == 3
    again = allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT + timedelta(hours=1))
    assert again.changed == [] and again.events == [] and not again.header_changed
    assert [r.order_id for r in again.to_order] == ["B", "A"]  # orders still to create


def test_crash_between_allocation_and_orders_never_allocates_twice() -> None:
    book = build(
        [("A", "STANDARD", 1, SHIP), ("B", "STANDARD", 1, SHIP), ("L", "STANDARD", 1, SHIP2)]
    )
    stored = [r.to_dict() for r in book.reservations()]
    first = allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT)
    # the worker dies after the allocation was stored but before any order was created
    book = ReservationBook.restore("PS6", "DC1", [r.to_dict() for r in book.reservations()])
    assert {r["reservationId"] for r in stored} == {r.reservation_id for r in book.reservations()}
    retry = allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT)
    assert retry.changed == []
    assert [r.reservation_id for r in retry.to_order] == [r.reservation_id for r in first.to_order]
    # A's order is created, B's fails: B keeps its unit and is retried next time
    assert order_created(book, rid("A"), RELEASE_AT).events[0]["eventType"] == "CONFIRMED"
    failed = order_failed(book, rid("B"), "HTTP 503", RELEASE_AT)
    assert failed.events == [] and [r.order_id for r in failed.changed] == ["B"]
    assert statuses(book)["B"] == ("RELEASE_FAILED", "HTTP 503")
    # next night: current ATP 1 (A's order now in the OMS); B still holds a unit → L is short
    nxt = allocate_release(book, SHIP2, 1, NO_COMMITS, RELEASE_AT + timedelta(days=7))
    assert statuses(book)["L"] == ("CANCELLED", "insufficient_inventory")
    assert [r.order_id for r in nxt.to_order] == ["B"]
    assert order_created(book, rid("B"), RELEASE_AT).ok
    assert statuses(book)["B"] == ("CONFIRMED", None)


def test_order_outcomes_are_idempotent() -> None:
    book = build([("A", "STANDARD", 1, SHIP), ("W", "STANDARD", 1, SHIP2)])
    allocate_release(book, SHIP, 1, NO_COMMITS, RELEASE_AT)
    assert order_created(book, rid("A"), RELEASE_AT).changed
    again = order_created(book, rid("A"), RELEASE_AT)
    assert again.ok and again.changed == [] and again.events == []
    assert order_failed(book, rid("A"), "late failure", RELEASE_AT).error == "not_pending"
    assert order_created(book, rid("W"), RELEASE_AT).error == "not_pending"
    assert order_created(book, "R-none", RELEASE_AT).error == "not_found"
    # a confirmed reservation can no longer be cancelled by the storefront
    assert book.cancel(rid("A"), PLENTY, NO_COMMITS, RELEASE_AT).error == "not_cancellable"


def test_fluent_order_input_is_deterministic() -> None:
    book = build([("A", "VIP", 2, SHIP)])
    reservation = book.get(rid("A"))
    assert reservation is not None
    assert fluent_order_ref(rid("A")) == "PO-" + rid("A")
    assert create_order_input(reservation, "1") == {
        "ref": "PO-" + rid("A"),
        "type": "HD",
        "retailer": {"id": "1"},
        "customer": {"id": "C-A"},
        "items": [{"ref": rid("A"), "productRef": "PS6", "quantity": 2}],
    }


def test_release_report_counts_by_tier_and_outcome() -> None:
    tight = Supply(3, (), 1.0)
    book = build(
        [
            ("V1", "VIP", 1, SHIP),
            ("S1", "STANDARD", 1, SHIP),
            ("S2", "STANDARD", 2, SHIP),
            ("S3", "STANDARD", 1, SHIP),
        ],
        supply=tight,
    )
    outcome = allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT)
    order_created(book, rid("V1"), RELEASE_AT)
    order_failed(book, rid("S1"), "boom", RELEASE_AT)
    started = RELEASE_AT
    report = release_report(
        SHIP, outcome.changed + outcome.to_order, started, started + timedelta(seconds=2.5)
    )
    assert report == {
        "releaseDate": "2030-02-01",
        "reservations": 4,
        "totals": {
            "CANCELLED_INSUFFICIENT_INVENTORY": 1,
            "CANCELLED_NOT_ALLOCATED": 1,
            "CONFIRMED": 1,
            "RELEASE_FAILED": 1,
        },
        "units": {  # S2 (2 units) was waitlisted; S3 (1 unit) was short
            "CANCELLED_INSUFFICIENT_INVENTORY": 1,
            "CANCELLED_NOT_ALLOCATED": 2,
            "CONFIRMED": 1,
            "RELEASE_FAILED": 1,
        },
        "byTier": {
            "STANDARD": {
                "CANCELLED_INSUFFICIENT_INVENTORY": 1,
                "CANCELLED_NOT_ALLOCATED": 1,
                "RELEASE_FAILED": 1,
            },
            "VIP": {"CONFIRMED": 1},
        },
        "startedAt": "2030-02-01T02:00:00Z",
        "finishedAt": "2030-02-01T02:00:02.500000Z",
        "durationSeconds": 2.5,
    }


_TIERS = ["STANDARD", "VIP", "PLATINUM"]


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(
        st.tuples(
            st.sampled_from(_TIERS),
            st.integers(1, 3),
            st.sampled_from([SHIP, SHIP2]),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    ),
    current_atp=st.integers(0, 30),
    committed_first=st.booleans(),
    release_date=st.sampled_from([SHIP, SHIP2]),
)
def test_release_never_over_confirms_and_follows_priority(
    items: list[tuple[str, int, date, bool]],
    current_atp: int,
    committed_first: bool,
    release_date: date,
) -> None:
    policy = Policy(commit_required=False, committed_first=committed_first)
    book = ReservationBook("PS6", "DC1")
    supply = Supply(20, (), 1.0)
    for number, (tier, quantity, ship, commit) in enumerate(items):
        outcome = book.place(req(f"O{number}", tier, quantity, ship), supply, policy, NOW)
        if commit and outcome.reservation is not None:
            book.commit(outcome.reservation.reservation_id, policy, NOW)
    before = {r.reservation_id: r.status for r in book.reservations()}
    eligible: list[Reservation] = sorted(
        (
            r
            for r in book.reservations()
            if r.status is Status.RESERVED and r.ship_date <= release_date
        ),
        key=lambda r: release_key(r, policy),
    )
    released = allocate_release(book, release_date, current_atp, policy, RELEASE_AT)
    confirmed = released.to_order
    assert sum(r.quantity for r in confirmed) <= current_atp
    # greedy in release order: each eligible item is confirmed exactly when it fits what is left
    left = current_atp
    for reservation in eligible:
        fits = reservation.quantity <= left
        if fits:
            left -= reservation.quantity
            assert reservation.status is Status.CONFIRMING
        else:
            assert (reservation.status, reservation.reason) == (
                Status.CANCELLED,
                "insufficient_inventory",
            )
    assert [r.reservation_id for r in confirmed] == [
        r.reservation_id for r in eligible if r.status is Status.CONFIRMING
    ]
    for reservation in book.reservations():
        if reservation.ship_date > release_date:
            assert reservation.status is before[reservation.reservation_id]
        elif before[reservation.reservation_id] is Status.WAITLISTED:
            assert (reservation.status, reservation.reason) == (Status.CANCELLED, "not_allocated")
    again = allocate_release(book, release_date, current_atp, policy, RELEASE_AT)
    assert again.changed == [] and again.events == []


def stored_copy(book: ReservationBook) -> ReservationBook:
    """The book as the changelog would give it back (its writes so far durable)."""
    return ReservationBook.restore(
        book.sku, book.location, [Reservation.from_dict(r.to_stored()) for r in book.reservations()]
    )


@settings(max_examples=40, deadline=None)
@given(lost=st.sets(st.sampled_from("ABCD"), min_size=1), order=st.permutations("ABCD"))
def test_a_confirmation_made_again_after_its_write_was_lost_makes_the_same_event(
    lost: set[str], order: list[str]
) -> None:
    """CONFIRMED is sent before its write: a kill (or an old owner evicted mid-group)
    can lose the write, and the resumed run confirms again, in whatever order Fluent
    answers then. It must send the same event (same id, same bytes), while the
    reservation's confirmedAt is when its order really was confirmed."""
    cause = "release:rel-20300201-abc"
    book = build([(o, "STANDARD", 1, SHIP) for o in "ABCD"])
    allocate_release(book, SHIP, 4, NO_COMMITS, RELEASE_AT, cause)
    durable = stored_copy(book)
    first: dict[str, list[dict[str, object]]] = {}
    for n, o in enumerate("ABCD"):
        at = RELEASE_AT + timedelta(seconds=n)
        first[o] = order_created(book, rid(o), at, cause, RELEASE_AT).events
        if o not in lost:  # this write reached the changelog
            order_created(durable, rid(o), at, cause, RELEASE_AT)
    assert len({e["eventId"] for events in first.values() for e in events}) == 4
    resumed = stored_copy(durable)
    later = RELEASE_AT + timedelta(minutes=5)
    for o in order:
        again = order_created(resumed, rid(o), later, cause, RELEASE_AT)
        assert again.events == (first[o] if o in lost else []), o
        confirmed = resumed.get(rid(o))
        assert confirmed is not None
        assert confirmed.confirmed_at == (later if o in lost else RELEASE_AT + timedelta(
            seconds="ABCD".index(o)))


def test_a_resumed_run_re_sends_its_events_with_the_same_ids() -> None:
    """The run is the cause of its events: an attempt that died between its writes and its
    events is resumed by re-sending what the run recorded, ids and moments unchanged."""
    book = build([("S1", "STANDARD", 1, SHIP), ("S2", "STANDARD", 1, SHIP), ("V1", "VIP", 1, SHIP)])
    cause = "release:rel-20300201-abc"
    first = allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT, cause)
    sent = list(first.events)
    for reservation in first.to_order:
        sent += order_created(book, reservation.reservation_id, RELEASE_AT, cause).events
    replayed = book.recorded_events(cause)
    assert {e["eventId"]: e for e in replayed} == {e["eventId"]: e for e in sent}
    assert sorted(e["eventType"] for e in replayed) == ["CANCELLED", "CONFIRMED", "CONFIRMED"]
    # a later attempt of the same run changes nothing and adds no event
    again = allocate_release(book, SHIP, 2, NO_COMMITS, RELEASE_AT + timedelta(minutes=3), cause)
    assert again.changed == [] and again.to_order == [] and again.events == []
    assert book.recorded_events(cause) == replayed
    # one order confirmed announces that one, not the run's earlier ones
    book2 = build([("A", "STANDARD", 1, SHIP), ("B", "STANDARD", 1, SHIP)])
    pending = allocate_release(book2, SHIP, 2, NO_COMMITS, RELEASE_AT, cause).to_order
    done = [order_created(book2, r.reservation_id, RELEASE_AT, cause) for r in pending]
    assert [len(d.events) for d in done] == [1, 1]
    assert [len(d.changed) + len(d.rewrite) for d in done] == [1, 1]  # no rewrite of the run
