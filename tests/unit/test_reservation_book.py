"""The reservation book: decisions, priority, preemption, queue positions, cancellation,
commits, expiry, idempotency, storage, and invariants under random operation sequences."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.book import ReservationBook
from stream_app.domain.future_atp import Supply, within_limits
from stream_app.domain.ids import expires_at_for, key_of_reservation_id, reservation_id
from stream_app.domain.model import HOLDING, Outcome, Reservation, Status, event_id
from stream_app.domain.preorders import ItemRequest, Policy
from stream_app.domain.priority import priority_key

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2030, 1, 2, 9, 30, tzinfo=UTC)  # a replay, a day later
SHIP = date(2030, 2, 1)
SHIP2 = date(2030, 2, 15)
POLICY = Policy()
EVENT_KEYS = {
    "eventId",
    "eventType",
    "reservationId",
    "orderId",
    "customerId",
    "sku",
    "location",
    "shipDate",
    "quantity",
    "tier",
    "sequence",
    "at",
}


def req(
    order: str,
    tier: str = "STANDARD",
    quantity: int = 1,
    ship: date = SHIP,
    customer: str | None = None,
    index: int = 0,
) -> ItemRequest:
    return ItemRequest(
        order_id=order,
        item_index=index,
        customer_id=customer or f"C-{order}",
        customer_email=f"{order}@example.com",
        tier=tier,
        ship_date=ship,
        sku="PS6",
        location="DC1",
        quantity=quantity,
    )


def new_book() -> ReservationBook:
    return ReservationBook("PS6", "DC1")


def stock(units: int) -> Supply:
    return Supply(units, (), 1.0)


def place(
    book: ReservationBook,
    order: str,
    tier: str = "STANDARD",
    supply: Supply | None = None,
    policy: Policy = POLICY,
    **kwargs: Any,
) -> Outcome:
    return book.place(req(order, tier, **kwargs), supply or stock(0), policy, NOW)


def status(outcome: Outcome) -> Status:
    assert outcome.reservation is not None
    return outcome.reservation.status


def rid(outcome: Outcome) -> str:
    assert outcome.reservation is not None
    return outcome.reservation.reservation_id


def kinds(outcome: Outcome) -> list[tuple[str, str]]:
    return [(e["eventType"], e["orderId"]) for e in outcome.events]


def queue_orders(book: ReservationBook, ship: date = SHIP) -> list[tuple[str, str]]:
    return [(e["orderId"], e["status"]) for e in book.queue(ship)]


# --- decisions -------------------------------------------------------------------------


def test_reserve_while_atp_lasts_then_waitlist() -> None:
    book = new_book()
    supply = Supply(2, (), 1.05)  # floor(2.1) = 2
    first = place(book, "A", supply=supply)
    assert status(first) is Status.RESERVED
    assert first.events[0]["queuePosition"] == 1
    assert set(first.events[0]) == EVENT_KEYS | {"queuePosition"}
    assert first.events[0]["at"] == "2030-01-01T12:00:00Z"
    assert status(place(book, "B", supply=supply)) is Status.RESERVED
    third = place(book, "C", supply=supply)
    assert status(third) is Status.WAITLISTED
    assert third.events == [
        {
            "eventType": "WAITLISTED",
            "reservationId": rid(third),
            "orderId": "C",
            "customerId": "C-C",
            "sku": "PS6",
            "location": "DC1",
            "shipDate": "2030-02-01",
            "quantity": 1,
            "tier": "STANDARD",
            "sequence": 3,
            "queuePosition": 3,
            "reason": "insufficient_inventory",
            "at": "2030-01-01T12:00:00Z",
            "eventId": event_id(rid(third), rid(third), 0),
        }
    ]
    assert third.reservation is not None and third.reservation.available == 0
    assert book.held_units() == 2


def test_rejected_with_available_when_waitlist_disabled() -> None:
    book = new_book()
    policy = Policy(waitlist_enabled=False)
    outcome = place(book, "A", quantity=3, supply=stock(2), policy=policy)
    assert status(outcome) is Status.REJECTED
    event = outcome.events[0]
    assert event["eventType"] == "REJECTED"
    assert event["reason"] == "insufficient_inventory" and event["available"] == 2
    assert "queuePosition" not in event
    assert book.queue_depth(SHIP) == 0 and book.held_units() == 0


def test_queue_depth_caps_the_waitlist() -> None:
    book = new_book()
    policy = Policy(max_queue_depth=3)
    supply = stock(1)
    assert [status(place(book, o, supply=supply, policy=policy)) for o in "ABCD"] == [
        Status.RESERVED,
        Status.WAITLISTED,
        Status.WAITLISTED,
        Status.REJECTED,
    ]
    rejected = book.get(reservation_id("D", "PS6", "DC1", 0))
    assert rejected is not None and rejected.reason == "queue_full"
    # items that fit the supply are never refused for depth: supply bounds them
    big = stock(10)
    assert status(place(book, "E", supply=big, policy=policy)) is Status.RESERVED
    # another ship date has its own queue
    assert status(place(book, "F", ship=SHIP2, policy=policy)) is Status.WAITLISTED


def test_every_vip_before_every_standard_whatever_the_times() -> None:
    book = new_book()
    for order in ["S1", "S2", "S3"]:
        place(book, order, "STANDARD")
    for order in ["V1", "V2"]:
        place(book, order, "VIP")
    place(book, "P1", "PLATINUM")
    place(book, "S4", "STANDARD")
    assert [o for o, _ in queue_orders(book)] == ["P1", "V1", "V2", "S1", "S2", "S3", "S4"]
    assert [e["queuePosition"] for e in book.queue(SHIP)] == list(range(1, 8))
    s1 = reservation_id("S1", "PS6", "DC1", 0)
    assert book.queue_position(s1) == 4
    s1_res = book.get(s1)
    assert s1_res is not None and s1_res.sequence == 1  # the arrival number never changes


def test_reserved_rank_before_waitlisted() -> None:
    book = new_book()
    place(book, "S1", "STANDARD", supply=stock(1))
    place(book, "V1", "VIP", supply=stock(1), policy=Policy(priority_preemption=False))
    assert queue_orders(book) == [("S1", "RESERVED"), ("V1", "WAITLISTED")]


def test_sequences_are_per_ship_date_and_one_based() -> None:
    book = new_book()
    a = place(book, "A")
    b = place(book, "B", ship=SHIP2)
    c = place(book, "C")
    assert [r.reservation.sequence for r in (a, b, c) if r.reservation] == [1, 1, 2]


# --- preemption ------------------------------------------------------------------------


def test_preemption_bumps_the_latest_lowest_tier_only() -> None:
    book = new_book()
    supply = stock(2)
    place(book, "S1", supply=supply)
    place(book, "S2", supply=supply)
    v1 = place(book, "V1", "VIP", supply=supply)
    assert status(v1) is Status.RESERVED
    assert kinds(v1) == [("BUMPED", "S2"), ("WAITLISTED", "S2"), ("RESERVED", "V1")]
    assert v1.events[0]["reason"] == "preempted_by_higher_tier"
    assert "queuePosition" not in v1.events[0]
    assert v1.events[1]["queuePosition"] == 3
    assert {r.order_id for r in v1.changed} == {"S2", "V1"}
    v2 = place(book, "V2", "VIP", supply=supply)
    assert kinds(v2) == [("BUMPED", "S1"), ("WAITLISTED", "S1"), ("RESERVED", "V2")]
    # nobody of a lower tier is left reserved: the next VIP waits, never bumping a VIP
    v3 = place(book, "V3", "VIP", supply=supply)
    assert kinds(v3) == [("WAITLISTED", "V3")]
    # a higher tier bumps the latest of the lowest reserved tier (VIP V2, not V1)
    p1 = place(book, "P1", "PLATINUM", supply=supply)
    assert kinds(p1) == [("BUMPED", "V2"), ("WAITLISTED", "V2"), ("RESERVED", "P1")]
    assert queue_orders(book) == [
        ("P1", "RESERVED"),
        ("V1", "RESERVED"),
        ("V2", "WAITLISTED"),
        ("V3", "WAITLISTED"),
        ("S1", "WAITLISTED"),
        ("S2", "WAITLISTED"),
    ]
    assert book.held_units() == 2


def test_never_bumps_within_a_tier() -> None:
    book = new_book()
    place(book, "S1", supply=stock(1))
    second = place(book, "S2", supply=stock(1))
    assert kinds(second) == [("WAITLISTED", "S2")]
    assert queue_orders(book) == [("S1", "RESERVED"), ("S2", "WAITLISTED")]


def test_preemption_can_be_switched_off() -> None:
    book = new_book()
    policy = Policy(priority_preemption=False)
    place(book, "S1", supply=stock(1), policy=policy)
    assert kinds(place(book, "V1", "VIP", supply=stock(1), policy=policy)) == [("WAITLISTED", "V1")]


def test_preemption_only_in_the_same_ship_date_queue() -> None:
    book = new_book()
    place(book, "S1", supply=stock(1), ship=SHIP)
    outcome = place(book, "V1", "VIP", supply=stock(1), ship=SHIP2)
    assert kinds(outcome) == [("WAITLISTED", "V1")]


def test_preemption_bumps_several_small_items_when_needed() -> None:
    book = new_book()
    supply = stock(3)
    for order in ["S1", "S2", "S3"]:
        place(book, order, supply=supply)
    outcome = place(book, "V1", "VIP", quantity=2, supply=supply)
    assert kinds(outcome) == [
        ("BUMPED", "S3"),
        ("WAITLISTED", "S3"),
        ("BUMPED", "S2"),
        ("WAITLISTED", "S2"),
        ("RESERVED", "V1"),
    ]


def test_no_bump_when_lower_tiers_cannot_free_enough() -> None:
    book = new_book()
    supply = stock(2)
    place(book, "S1", supply=supply)
    place(book, "V1", "VIP", supply=supply)
    outcome = place(book, "V2", "VIP", quantity=2, supply=supply)
    assert kinds(outcome) == [("WAITLISTED", "V2")]
    assert queue_orders(book)[:2] == [("V1", "RESERVED"), ("S1", "RESERVED")]


def test_bumped_item_is_promoted_again_when_units_free_up() -> None:
    book = new_book()
    supply = stock(1)
    place(book, "S1", supply=supply)
    v1 = place(book, "V1", "VIP", supply=supply)
    cancel = book.cancel(rid(v1), supply, POLICY, NOW)
    assert kinds(cancel) == [("CANCELLED", "V1"), ("PROMOTED", "S1")]
    assert cancel.events[1]["queuePosition"] == 1


# --- two ship dates --------------------------------------------------------------------


def test_two_ship_dates_never_double_promise() -> None:
    book = new_book()
    supply = stock(10)
    late = place(book, "LATE", quantity=10, ship=SHIP2, supply=supply)
    assert status(late) is Status.RESERVED
    early = place(book, "EARLY", quantity=1, ship=SHIP, supply=supply)
    assert status(early) is Status.WAITLISTED  # the late date already holds every unit
    assert book.future_atp(supply, SHIP) == 0 and book.future_atp(supply, SHIP2) == 0

    other = new_book()
    assert status(place(other, "E", quantity=6, ship=SHIP, supply=supply)) is Status.RESERVED
    assert status(place(other, "L", quantity=5, ship=SHIP2, supply=supply)) is Status.WAITLISTED
    assert status(place(other, "L2", quantity=4, ship=SHIP2, supply=supply)) is Status.RESERVED
    assert within_limits(supply, other.held_by_date())


def test_arrivals_serve_later_dates_only() -> None:
    book = new_book()
    supply = Supply(1, ((SHIP2, 5),), 1.0)
    assert status(place(book, "A", quantity=2, ship=SHIP, supply=supply)) is Status.WAITLISTED
    assert status(place(book, "B", quantity=6, ship=SHIP2, supply=supply)) is Status.RESERVED


# --- cancellation ----------------------------------------------------------------------


def test_cancellation_promotes_the_first_waitlisted_by_priority() -> None:
    book = new_book()
    supply = stock(1)
    policy = Policy(priority_preemption=False)
    first = place(book, "S1", supply=supply, policy=policy)
    place(book, "S2", supply=supply, policy=policy)
    place(book, "V1", "VIP", supply=supply, policy=policy)
    outcome = book.cancel(rid(first), supply, policy, NOW)
    assert kinds(outcome) == [("CANCELLED", "S1"), ("PROMOTED", "V1")]
    assert outcome.events[0]["reason"] == "cancelled"
    assert queue_orders(book) == [("V1", "RESERVED"), ("S2", "WAITLISTED")]
    assert {r.order_id for r in outcome.changed} == {"S1", "V1"}
    assert book.queue_position(reservation_id("S2", "PS6", "DC1", 0)) == 2


def test_promotion_is_head_of_line_within_a_queue() -> None:
    book = new_book()
    supply = stock(1)
    first = place(book, "A", supply=supply)
    place(book, "BIG", quantity=2, supply=supply)
    place(book, "SMALL", quantity=1, supply=supply)
    outcome = book.cancel(rid(first), supply, POLICY, NOW)
    assert kinds(outcome) == [("CANCELLED", "A")]  # BIG is first in line and needs 2
    outcome = book.promote(stock(3), POLICY, NOW)
    assert kinds(outcome) == [("PROMOTED", "BIG"), ("PROMOTED", "SMALL")]


def test_cancelling_a_waitlisted_head_lets_the_next_in() -> None:
    book = new_book()
    supply = stock(2)
    place(book, "A", supply=supply)
    second = place(book, "B", supply=supply)
    big = place(book, "BIG", quantity=3, supply=supply)
    place(book, "SMALL", supply=supply)
    assert kinds(book.cancel(rid(second), supply, POLICY, NOW)) == [("CANCELLED", "B")]
    outcome = book.cancel(rid(big), supply, POLICY, NOW)
    assert kinds(outcome) == [("CANCELLED", "BIG"), ("PROMOTED", "SMALL")]


def test_cancel_waitlisted_is_idempotent_and_frees_nothing() -> None:
    book = new_book()
    place(book, "A", supply=stock(1))
    waiting = place(book, "B", supply=stock(1))
    place(book, "C", supply=stock(1))
    outcome = book.cancel(rid(waiting), stock(1), POLICY, NOW)
    assert kinds(outcome) == [("CANCELLED", "B")]
    assert book.queue_position(reservation_id("C", "PS6", "DC1", 0)) == 2
    again = book.cancel(rid(waiting), stock(1), POLICY, LATER)
    # nothing changes; the recorded outcome is sent again, the same event with the same id
    assert again.ok and again.changed == [] and again.events == outcome.events
    assert book.cancel("R-missing", stock(1), POLICY, NOW).error == "not_found"


def test_cancel_by_order_over_the_book() -> None:
    book = new_book()
    supply = stock(3)
    book.place(req("O1", index=0), supply, POLICY, NOW)
    book.place(req("O1", index=1, ship=SHIP2), supply, POLICY, NOW)
    book.place(req("O2", quantity=2), supply, POLICY, NOW)
    assert book.get(reservation_id("O2", "PS6", "DC1", 0)).status is Status.WAITLISTED  # type: ignore[union-attr]
    outcome = book.cancel_order("O1", supply, POLICY, NOW)
    assert kinds(outcome) == [("CANCELLED", "O1"), ("CANCELLED", "O1"), ("PROMOTED", "O2")]
    assert book.cancel_order("O1", supply, POLICY, LATER).events == outcome.events
    assert book.cancel_order("nope", supply, POLICY, NOW).error == "not_found"


# --- idempotency -----------------------------------------------------------------------


def test_placing_the_same_item_twice_returns_the_first_decision() -> None:
    book = new_book()
    first = place(book, "A", supply=stock(1))
    again = place(book, "A", supply=stock(0), quantity=5)
    assert again.duplicate and again.reservation is first.reservation
    assert again.changed == [] and not again.header_changed
    assert again.events == first.events  # the decision is announced again, same id
    assert status(again) is Status.RESERVED and len(book) == 1
    rejected = place(book, "B", supply=stock(1), policy=Policy(waitlist_enabled=False))
    assert status(rejected) is Status.REJECTED
    replay = place(book, "B", supply=stock(9), policy=Policy(waitlist_enabled=False))
    assert replay.duplicate and status(replay) is Status.REJECTED


def test_reservation_ids_are_deterministic() -> None:
    first = reservation_id("O1", "PS6", "DC1", 0)
    assert first == reservation_id("O1", "PS6", "DC1", 0)
    assert first.startswith("R-") and key_of_reservation_id(first) == "PS6|DC1"
    assert (
        len({first, reservation_id("O1", "PS6", "DC1", 1), reservation_id("O1", "PS6", "DC2", 0)})
        == 3
    )
    assert reservation_id("a|b", "c", "d", 0) != reservation_id("a", "b|c", "d", 0)


# --- customer limit --------------------------------------------------------------------


def test_max_per_customer_across_orders() -> None:
    book = new_book()
    policy = Policy(max_per_customer=1)
    first = book.place(req("O1", customer="ann"), stock(5), policy, NOW)
    second = book.place(req("O2", customer="ann"), stock(5), policy, NOW)
    assert status(second) is Status.REJECTED
    assert second.events[0]["reason"] == "max_per_customer"
    assert status(book.place(req("O3", customer="bob"), stock(5), policy, NOW)) is Status.RESERVED
    book.cancel(rid(first), stock(5), policy, NOW)
    assert status(book.place(req("O4", customer="ann"), stock(5), policy, NOW)) is Status.RESERVED


def test_waitlisted_units_count_towards_the_customer_limit() -> None:
    book = new_book()
    policy = Policy(max_per_customer=2)
    assert status(book.place(req("O1", customer="ann"), stock(0), policy, NOW)) is Status.WAITLISTED
    second = book.place(req("O2", customer="ann", quantity=2), stock(9), policy, NOW)
    assert status(second) is Status.REJECTED


# --- commits and expiry ----------------------------------------------------------------


def test_commit_is_idempotent_and_only_for_reserved() -> None:
    book = new_book()
    reserved = place(book, "A", supply=stock(1))
    waiting = place(book, "B", supply=stock(1))
    outcome = book.commit(rid(reserved), POLICY, NOW)
    assert kinds(outcome) == [("COMMITTED", "A")]
    assert outcome.reservation is not None and outcome.reservation.committed
    assert outcome.reservation.status is Status.RESERVED
    again = book.commit(rid(reserved), POLICY, LATER)
    assert again.ok and again.events == outcome.events and again.changed == []
    assert book.commit(rid(waiting), POLICY, NOW).error == "not_reserved"
    assert book.commit("R-x", POLICY, NOW).error == "not_found"


def test_commit_after_the_deadline_is_refused() -> None:
    book = new_book()
    reserved = place(book, "A", supply=stock(1))
    deadline = expires_at_for(SHIP, POLICY.expiry_days)
    assert reserved.reservation is not None and reserved.reservation.expires_at == deadline
    assert reserved.reservation.to_dict()["expiresAt"] == "2030-01-25T00:00:00Z"
    late = book.commit(rid(reserved), POLICY, deadline)
    assert late.error == "commit_deadline_passed" and late.changed == []
    assert book.commit(rid(reserved), Policy(commit_required=False), deadline).ok


def test_expiry_frees_units_and_promotes() -> None:
    book = new_book()
    supply = stock(2)
    early = place(book, "EARLY", supply=supply, ship=SHIP)
    paid = place(book, "PAID", supply=supply, ship=SHIP)
    late = place(book, "LATE", supply=supply, ship=SHIP2)
    assert status(late) is Status.WAITLISTED
    book.commit(rid(paid), POLICY, NOW)
    before = book.expire(supply, POLICY, expires_at_for(SHIP, 7) - timedelta(seconds=1))
    assert before.events == [] and before.changed == []
    outcome = book.expire(supply, POLICY, expires_at_for(SHIP, 7))
    assert kinds(outcome) == [("EXPIRED", "EARLY"), ("PROMOTED", "LATE")]
    assert outcome.events[0]["reason"] == "not_committed"
    assert status(early) is Status.EXPIRED and status(paid) is Status.RESERVED
    assert book.expire(supply, POLICY, expires_at_for(SHIP, 7)).events == []


def test_no_promotion_into_a_queue_past_its_commit_deadline() -> None:
    book = new_book()
    supply = stock(1)
    first = place(book, "A", supply=supply)
    place(book, "B", supply=supply)
    outcome = book.expire(supply, POLICY, expires_at_for(SHIP, 7))
    assert kinds(outcome) == [("EXPIRED", "A")]  # B could not commit in time: it waits
    assert status(first) is Status.EXPIRED
    relaxed = Policy(commit_required=False)
    assert book.expire(supply, relaxed, expires_at_for(SHIP, 7)).events == []
    assert kinds(book.promote(supply, relaxed, NOW)) == [("PROMOTED", "B")]


# --- new supply ------------------------------------------------------------------------


def test_new_supply_promotes_in_priority_order_earliest_date_first() -> None:
    book = new_book()
    place(book, "S1", ship=SHIP2)
    place(book, "S2", ship=SHIP)
    place(book, "V1", "VIP", ship=SHIP)
    place(book, "S3", ship=SHIP)
    outcome = book.promote(stock(2), POLICY, NOW)
    assert kinds(outcome) == [("PROMOTED", "V1"), ("PROMOTED", "S2")]
    assert [e["queuePosition"] for e in outcome.events] == [1, 2]
    outcome = book.promote(stock(4), POLICY, NOW)
    assert kinds(outcome) == [("PROMOTED", "S3"), ("PROMOTED", "S1")]
    assert book.promote(stock(4), POLICY, NOW).events == []


def test_mass_promotion_keeps_ranks_right() -> None:
    book = new_book()
    tiers = ["STANDARD", "VIP", "PLATINUM"]
    for i in range(200):
        place(book, f"O{i}", tiers[i % 3])
    outcome = book.promote(stock(150), POLICY, NOW)
    assert len(outcome.events) == 150
    assert_consistent(book)
    # 66 PLATINUM, then 67 VIP, then the first 17 STANDARD by arrival
    assert [e["tier"] for e in outcome.events] == ["PLATINUM"] * 66 + ["VIP"] * 67 + [
        "STANDARD"
    ] * 17
    assert [e["queuePosition"] for e in outcome.events] == list(range(1, 151))
    standard = [e["orderId"] for e in outcome.events if e["tier"] == "STANDARD"]
    assert standard == [f"O{i}" for i in range(0, 51, 3)]


# --- views and storage -----------------------------------------------------------------


def test_queue_paging() -> None:
    book = new_book()
    for i in range(10):
        place(book, f"O{i}", supply=stock(4))
    page = book.queue(SHIP, offset=3, limit=3)
    assert [e["queuePosition"] for e in page] == [4, 5, 6]
    assert [e["status"] for e in page] == ["RESERVED", "WAITLISTED", "WAITLISTED"]
    view = book.queue_view(SHIP, limit=2)
    assert view["sku"] == "PS6" and view["depth"] == 10 and len(view["entries"]) == 2
    assert book.queue(date(2031, 1, 1)) == []


def test_reservation_dict_round_trip_and_restore() -> None:
    book = new_book()
    supply = stock(3)
    tiers = ["STANDARD", "VIP"]
    for i in range(12):
        book.place(req(f"O{i}", tiers[i % 2], ship=SHIP if i % 3 else SHIP2), supply, POLICY, NOW)
    book.commit(reservation_id("O1", "PS6", "DC1", 0), POLICY, NOW)
    book.cancel(reservation_id("O3", "PS6", "DC1", 0), supply, POLICY, NOW)
    stored = [r.to_dict() for r in book.reservations()]
    for data in stored:
        assert Reservation.from_dict(data).to_dict() == data
        for key in [
            "reservationId",
            "orderId",
            "sku",
            "location",
            "shipDate",
            "quantity",
            "tier",
            "status",
            "sequence",
            "queuePosition",
            "expiresAt",
        ]:
            assert key in data
    restored = ReservationBook.restore("PS6", "DC1", stored, book.header())
    assert restored.header() == book.header()
    for ship in (SHIP, SHIP2):
        assert restored.queue(ship) == book.queue(ship)
    nxt = restored.place(req("NEW"), supply, POLICY, NOW)
    assert nxt.reservation is not None and nxt.reservation.sequence == 9
    with pytest.raises(ValueError):
        ReservationBook.restore("OTHER", "DC1", stored)


def test_header_changes_are_reported() -> None:
    book = new_book()
    placed = place(book, "A", supply=stock(1))
    assert placed.header_changed
    assert book.header()["lastSequence"] == {"2030-02-01": 1}
    assert book.header()["heldUnits"] == 1
    assert not book.commit(rid(placed), POLICY, NOW).header_changed
    assert book.cancel(rid(placed), stock(1), POLICY, NOW).header_changed


def test_clock_must_be_timezone_aware() -> None:
    book = new_book()
    with pytest.raises(ValueError):
        book.place(req("A"), stock(1), POLICY, datetime(2030, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError):
        book.place(
            ItemRequest("A", 0, "C", "e@x", "VIP", SHIP, "OTHER", "DC1", 1), stock(1), POLICY, NOW
        )


# --- invariants under random operations ------------------------------------------------


def assert_consistent(
    book: ReservationBook, supply: Supply | None = None, settled: bool = False
) -> None:
    everything = list(book.reservations())
    held: dict[date, int] = {}
    for reservation in everything:
        if reservation.status in HOLDING:
            held[reservation.ship_date] = held.get(reservation.ship_date, 0) + reservation.quantity
    assert {d: u for d, u in book.held_by_date().items() if u} == held
    if supply is not None:
        assert within_limits(supply, book.held_by_date())
    for ship in book.ship_dates():
        entries = book.queue(ship)
        assert [e["queuePosition"] for e in entries] == list(range(1, len(entries) + 1))
        groups = [
            (0 if e["status"] == "RESERVED" else 1, priority_key(e["tierScore"], e["sequence"]))
            for e in entries
        ]
        assert groups == sorted(groups)
        queued = {
            r.reservation_id
            for r in book.reservations_for(ship)
            if r.status in (Status.RESERVED, Status.WAITLISTED)
        }
        assert {e["reservationId"] for e in entries} == queued
        for entry in entries:
            assert book.queue_position(entry["reservationId"]) == entry["queuePosition"]
        sequences = sorted(r.sequence for r in book.reservations_for(ship))
        assert sequences == list(range(1, len(sequences) + 1))
        waiting = [e for e in entries if e["status"] == "WAITLISTED"]
        if settled and supply is not None and waiting:
            # promotion never leaves a waitlisted head that fits
            assert waiting[0]["quantity"] > book.future_atp(supply, ship)


_TIERS = ["STANDARD", "VIP", "PLATINUM"]
_DATES = [SHIP, SHIP + timedelta(days=3), SHIP2]

#: one operation: (kind, order number, tier, ship date, quantity, flag); order numbers
#: repeat, which exercises idempotent re-placing and cancelling what is already gone
Op = tuple[str, int, str, date, int, bool]


def ops_strategy(kinds: list[str], min_size: int, max_size: int) -> st.SearchStrategy[list[Op]]:
    return st.lists(
        st.tuples(
            st.sampled_from(kinds),
            st.integers(0, 15),
            st.sampled_from(_TIERS),
            st.sampled_from(_DATES),
            st.sampled_from([1, 1, 1, 2, 3]),
            st.booleans(),
        ),
        min_size=min_size,
        max_size=max_size,
    )


def run_ops(book: ReservationBook, supply: Supply, policy: Policy, ops: Iterable[Op]) -> None:
    settled = True  # the clock never passed a commit deadline
    for kind, number, tier, ship, quantity, flag in ops:
        order = f"O{number}"
        if kind == "place":
            outcome = book.place(req(order, tier, quantity, ship), supply, policy, NOW)
            score = policy.tier_scores[tier]
            # a duplicate (same order, maybe another tier or date) announces the FIRST
            # decision again: its events are about that request
            for event in [] if outcome.duplicate else outcome.events:
                if event["eventType"] == "BUMPED":
                    assert policy.tier_scores[event["tier"]] < score
                    assert event["shipDate"] == ship.isoformat()
        elif kind == "expire":
            book.expire(supply, policy, expires_at_for(ship, policy.expiry_days))
            settled = False
        else:
            # aim at a live reservation most of the time (the number picks which one)
            live = [
                r for r in book.reservations() if r.status in (Status.RESERVED, Status.WAITLISTED)
            ]
            target = live[number % len(live)] if live and number else None
            target_id = target.reservation_id if target else reservation_id(order, "PS6", "DC1", 0)
            if kind == "commit":
                book.commit(target_id, policy, NOW)
            elif flag:
                book.cancel_order(target.order_id if target else order, supply, policy, NOW)
            else:
                book.cancel(target_id, supply, policy, NOW)
        assert_consistent(book, supply, settled)


@settings(max_examples=120, deadline=None)
@given(
    current=st.integers(1, 6),
    arrivals=st.lists(st.tuples(st.sampled_from(_DATES), st.integers(1, 4)), max_size=2),
    rate=st.sampled_from([1.0, 1.05, 1.5]),
    preemption=st.booleans(),
    depth=st.integers(1, 30),
    ops=ops_strategy(["place"] * 4 + ["cancel"] * 3 + ["commit", "expire"], 8, 40),
)
def test_random_operations_keep_every_invariant(
    current: int,
    arrivals: list[tuple[date, int]],
    rate: float,
    preemption: bool,
    depth: int,
    ops: list[Op],
) -> None:
    supply = Supply(current, tuple(arrivals), rate)
    policy = Policy(priority_preemption=preemption, max_queue_depth=depth)
    book = new_book()
    run_ops(book, supply, policy, ops)
    restored = ReservationBook.restore("PS6", "DC1", [r.to_dict() for r in book.reservations()])
    assert restored.header() == book.header()
    for ship in book.ship_dates():
        assert restored.queue(ship) == book.queue(ship)


@settings(max_examples=80, deadline=None)
@given(
    current=st.integers(0, 30),
    expected=st.integers(0, 30),
    rate=st.sampled_from([1.0, 1.05, 1.2]),
    ops=ops_strategy(["place", "place", "cancel"], 5, 30),
)
def test_single_ship_date_future_atp(
    current: int, expected: int, rate: float, ops: list[Op]
) -> None:
    supply = Supply(current, ((SHIP - timedelta(days=10), expected),), rate)
    book = new_book()
    single = [(kind, n, tier, SHIP, q, flag) for kind, n, tier, _ship, q, flag in ops]
    run_ops(book, supply, POLICY, single)
    limit = supply.limit(SHIP)
    reserved = sum(r.quantity for r in book.reservations() if r.status is Status.RESERVED)
    assert book.future_atp(supply, SHIP) == limit - reserved
    assert reserved <= limit


def test_a_refused_commit_is_refused_again_on_its_replay_but_a_new_attempt_is_judged_anew() -> None:
    book = new_book()
    supply = stock(1)
    first = place(book, "FIRST", supply=supply)
    waiting = place(book, "WAITING", supply=supply)
    assert waiting.reservation is not None and waiting.reservation.status is Status.WAITLISTED
    refused = book.commit(rid(waiting), POLICY, NOW, attempt="cmds:0:7")
    assert refused.error == "not_reserved" and refused.changed == [waiting.reservation]
    assert refused.events == []  # a refusal announces nothing
    book.cancel(rid(first), supply, POLICY, NOW)  # frees the unit: WAITING is promoted
    assert waiting.reservation.status is Status.RESERVED
    # the refusal is stored with the reservation: a restored book refuses the replay too
    restored = ReservationBook.restore(
        book.sku, book.location,
        [Reservation.from_dict(r.to_stored()) for r in book.reservations()],
    )
    for subject in (book, restored):
        replayed = subject.commit(rid(waiting), POLICY, NOW, attempt="cmds:0:7")
        assert replayed.error == "not_reserved" and replayed.duplicate
        assert replayed.reservation is not None and not replayed.reservation.committed
    again = book.commit(rid(waiting), POLICY, NOW, attempt="cmds:0:9")  # the customer retries
    assert again.ok and waiting.reservation.committed
