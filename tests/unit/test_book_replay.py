"""Replay after a crash: the same state AND the same outputs as a run without the crash.

The model of the product's storage and delivery (agents.preorders, tables.reservations):
inputs are processed in groups; a group's changed reservations are written as CHUNKS (all
reservations of a chunk), in the order of ``plan_writes`` (each operation's chunks as
they are after it, consecutive writes of one chunk coalesced); the group's events are sent
only once every write is on the broker; offsets are committed after that. A kill -9 can land anywhere in a group's writes: a prefix of its
chunk writes is durable, none of its events went out. The restarted worker rebuilds the
book from the durable chunks alone (local state discarded, stream_app.local_state) and
processes again every input from a committed offset at or before the crashed group.

Oracle: the same inputs through one book without a crash. Both runs must end with equal
stored reservations and announce the same events: every event id of the oracle, each with
the same content, and no other id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.books import operation_step
from stream_app.domain.book import ReservationBook
from stream_app.domain.future_atp import Supply
from stream_app.domain.ids import reservation_id
from stream_app.domain.model import STATUS_AFTER, EventType, Outcome, Reservation
from stream_app.domain.preorders import ItemRequest, Policy
from tables.reservations import plan_writes

SKU, LOC = "PS6", "DC1"
START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SHIPS = (date(2030, 2, 1), date(2030, 2, 8))
POLICY = Policy(max_per_customer=None)
TIERS = ("STANDARD", "VIP", "PLATINUM")
CHUNK = 4  # small, so that operations share and straddle chunks


@dataclass(frozen=True)
class Op:
    kind: str  # place | cancel | commit | supply
    n: int  # order number (place/cancel/commit) or new stock (supply)
    tier: int = 0
    quantity: int = 1
    ship: int = 0


def commands_after_their_order(ops: list[Op]) -> list[Op]:
    """Cancels and commits only of orders placed before them (what a customer can do: a
    command for an id that does not exist yet is answered not_found, and a replay after
    the order's write became durable would find it — one order of two inputs that no
    replay can restore)."""
    placed: set[int] = set()
    kept: list[Op] = []
    for op in ops:
        if op.kind == "place":
            placed.add(op.n)
        elif op.kind in ("cancel", "commit") and op.n not in placed:
            continue
        kept.append(op)
    return kept


ops_strategy = st.lists(
    st.one_of(
        st.builds(Op, st.just("place"), st.integers(0, 30), st.integers(0, 2),
                  st.integers(1, 3), st.integers(0, 1)),
        st.builds(Op, st.just("cancel"), st.integers(0, 30)),
        st.builds(Op, st.just("commit"), st.integers(0, 30)),
        st.builds(Op, st.just("supply"), st.integers(0, 8)),
    ),
    min_size=1,
    max_size=40,
).map(commands_after_their_order).filter(bool)


def supply_at(ops: list[Op], index: int) -> Supply:
    """The stock an input sees: set by the latest supply input before it (input-determined,
    as the inventory table is for the product)."""
    stock = 3
    for op in ops[:index]:
        if op.kind == "supply":
            stock = op.n
    return Supply(stock, (), 1.0)


def apply(book: ReservationBook, ops: list[Op], index: int, inventory: list[int]) -> Outcome:
    """One input, as the glue applies it. ``inventory[0]``: the last supply input the
    inventory table holds (its write precedes the reservation writes and survives the
    crash); a replayed supply input changes nothing there, and its book only sends the
    promotions recorded for it again (agents.books.Books.promote)."""
    op = ops[index]
    now = START + timedelta(minutes=index)  # the input's own timestamp
    supply = supply_at(ops, index)
    order = f"O{op.n}"
    rid = reservation_id(order, SKU, LOC, 0)
    if op.kind == "place":
        request = ItemRequest(order, 0, f"C{op.n}", "", TIERS[op.tier], SHIPS[op.ship],
                              SKU, LOC, op.quantity)
        return book.place(request, supply, POLICY, now)
    if op.kind == "cancel":
        return book.cancel(rid, supply, POLICY, now)
    if op.kind == "commit":
        return book.commit(rid, POLICY, now, attempt=f"input:{index}")  # as the router sets it
    if index <= inventory[0]:  # the table holds this stock or newer: a replay
        return book.resend(f"supply:{index}")
    inventory[0] = index
    return book.promote(supply_at(ops, index + 1), POLICY, now, f"supply:{index}")


def chunk_name(reservation: Reservation) -> str:
    return f"{reservation.ship_date}-{reservation.sequence // CHUNK}"


class Worker:
    """One worker's book, its durable chunks and what it announced."""

    def __init__(self, durable: dict[str, dict[str, Any]]) -> None:
        self.durable = durable  # rid -> stored reservation (the changelog's latest values)
        self.book = ReservationBook.restore(
            SKU, LOC, [Reservation.from_dict(data) for data in durable.values()]
        )
        self.announced: list[dict[str, Any]] = []
        self.inventory = [-1]
        #: the worker's view of its chunks (the store's cache): chunk → rid → bytes
        self.live: dict[str, dict[str, bytes]] = {}
        for data in durable.values():
            restored = Reservation.from_dict(data)
            self.live.setdefault(chunk_name(restored), {})[restored.reservation_id] = (
                orjson.dumps(data)
            )

    def run_group(self, ops: list[Op], indexes: range, durable_writes: int | None) -> bool:
        """Process a group; ``durable_writes`` = how many of its chunk writes reach the
        broker before a kill (None: all, then its events are sent). False if killed.
        The writes are the product's: one step per operation (agents.preorders), in the
        order of tables.reservations.plan_writes."""
        steps: list[Any] = []
        events: list[dict[str, Any]] = []
        for index in indexes:
            outcome = apply(self.book, ops, index, self.inventory)
            step = operation_step(outcome)
            if step:
                steps.append(step)
            events.extend(outcome.events)
        plan = plan_writes(steps, chunk_name, self.live)
        for number, (_, entries) in enumerate(plan):
            if durable_writes is not None and number >= durable_writes:
                return False
            for rid, raw in entries.items():  # what the changelog holds: bytes
                self.durable[rid] = orjson.loads(raw)
        if durable_writes is not None:
            return False
        self.announced.extend(events)
        return True


def groups_of(ops: list[Op], size: int) -> list[range]:
    return [range(start, min(start + size, len(ops))) for start in range(0, len(ops), size)]


def by_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for event in events:
        known = found.setdefault(event["eventId"], event)
        assert known == event, f"one event id, two contents: {known} / {event}"
    return found


def oracle(ops: list[Op], size: int) -> Worker:
    worker = Worker({})
    for group in groups_of(ops, size):
        assert worker.run_group(ops, group, None)
    return worker


def crash_and_replay(ops: list[Op], size: int, crash: st.DataObject) -> tuple[Worker, Worker]:
    """(the uninterrupted run, the crashed-then-replayed run with everything it announced
    before and after the crash)."""
    expected = oracle(ops, size)
    groups = groups_of(ops, size)
    crashed_group = crash.draw(st.integers(0, len(groups) - 1), "crashed group")
    durable_writes = crash.draw(st.integers(0, 12), "chunk writes that reached the broker")
    committed = crash.draw(st.integers(0, crashed_group), "first group replayed")

    first = Worker({})
    for number, group in enumerate(groups):
        if number == crashed_group:
            assert not first.run_group(ops, group, durable_writes)
            break
        assert first.run_group(ops, group, None)
    # a new worker: the changelog alone, every input from the committed offset on
    second = Worker(dict(first.durable))
    second.inventory = first.inventory
    for group in groups[committed:]:
        assert second.run_group(ops, group, None)
    second.announced[:0] = first.announced
    return expected, second


def stock_first(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.kind != "supply"] or [Op("place", 0)]


@settings(max_examples=300, deadline=None)
@given(ops=ops_strategy.map(stock_first), size=st.integers(1, 4), crash=st.data())
def test_a_crash_anywhere_then_replay_gives_the_same_state_and_outputs(
    ops: list[Op], size: int, crash: st.DataObject
) -> None:
    """Pre-orders, cancels and commits against a fixed stock: the replayed run stores the
    same reservations (histories included) and announces exactly the same event ids with
    the same contents."""
    expected, replayed = crash_and_replay(ops, size, crash)
    assert replayed.durable == expected.durable
    assert by_id(replayed.announced) == by_id(expected.announced)
    assert_announced_state(replayed)


def assert_announced_state(worker: Worker) -> None:
    """Every stored reservation's state is the one its latest announcement implies (no
    decision unannounced, none contradicted), and each event id has one content."""
    by_id(worker.announced)
    latest: dict[str, str] = {}
    committed: set[str] = set()
    seen: set[str] = set()
    for event in worker.announced:  # as a consumer that drops ids it has seen
        if event["eventId"] in seen:
            continue
        seen.add(event["eventId"])
        if event["eventType"] == "COMMITTED":
            committed.add(event["reservationId"])
        else:
            latest[event["reservationId"]] = str(STATUS_AFTER[EventType(event["eventType"])])
    for rid, data in worker.durable.items():
        assert latest.get(rid) == data["status"], (rid, data["status"], latest.get(rid))
        assert (rid in committed) == data["committed"]


@settings(max_examples=300, deadline=None)
@given(ops=ops_strategy, size=st.integers(1, 4), crash=st.data())
def test_with_supply_changes_a_replay_announces_every_state_and_contradicts_none(
    ops: list[Op], size: int, crash: st.DataObject
) -> None:
    """With supply changing around the crash the replay may decide differently from the
    uninterrupted run: a promotion whose write was lost is left to the next promotion
    pass (a replayed supply input decides nothing new). What it never does: leave a
    state unannounced, announce one it does not keep, or give one id two contents."""
    expected, replayed = crash_and_replay(ops, size, crash)
    assert_announced_state(expected)
    assert_announced_state(replayed)
    assert replayed.durable.keys() == expected.durable.keys()


@settings(max_examples=100, deadline=None)
@given(ops=ops_strategy)
def test_processing_every_input_twice_changes_nothing_and_announces_the_same(
    ops: list[Op],
) -> None:
    expected = oracle(ops, 1)
    twice = Worker({})
    for index in range(len(ops)):
        assert twice.run_group(ops, range(index, index + 1), None)
        assert twice.run_group(ops, range(index, index + 1), None)
    assert twice.durable == expected.durable
    assert by_id(twice.announced) == by_id(expected.announced)


def test_a_replayed_decision_is_announced_again_with_its_bumps() -> None:
    """A VIP bumps a STANDARD; the first run is killed after its writes, before its
    events: the replay announces BUMPED, WAITLISTED and RESERVED with the first ids."""
    ops = [Op("supply", 1), Op("place", 1, 0), Op("place", 2, 1)]
    expected = oracle(ops, 1)
    first = Worker({})
    assert first.run_group(ops, range(0, 1), None)
    assert first.run_group(ops, range(1, 2), None)
    assert not first.run_group(ops, range(2, 3), 99)  # every write durable, no event sent
    second = Worker(dict(first.durable))
    second.inventory = first.inventory
    assert second.run_group(ops, range(2, 3), None)
    kinds = [(e["eventType"], e["orderId"]) for e in second.announced]
    assert kinds == [("BUMPED", "O1"), ("WAITLISTED", "O1"), ("RESERVED", "O2")]
    assert by_id(first.announced + second.announced) == by_id(expected.announced)


def test_a_half_written_cancel_is_completed_by_its_replay() -> None:
    """Cancelling A frees the unit a waitlisted reservation of a later ship date gets; the
    kill lands after A's chunk write and before the promoted one's: the replay finds A
    cancelled and re-applies the promotion A's record names (then announces both)."""
    ops = [Op("supply", 1), Op("place", 1, 0, 1, 0), Op("place", 2, 0, 1, 1), Op("cancel", 1)]
    expected = oracle(ops, 1)
    first = Worker({})
    for index in range(3):
        assert first.run_group(ops, range(index, index + 1), None)
    assert not first.run_group(ops, range(3, 4), 1)  # A's chunk durable, not the other
    half = Worker(dict(first.durable))
    promoted = half.book.get(reservation_id("O2", SKU, LOC, 0))
    assert promoted is not None and promoted.status.value == "WAITLISTED"
    half.inventory = first.inventory
    assert half.run_group(ops, range(3, 4), None)
    assert [(e["eventType"], e["orderId"]) for e in half.announced] == [
        ("CANCELLED", "O1"), ("PROMOTED", "O2")
    ]
    assert half.durable == expected.durable
    assert by_id(first.announced + half.announced) == by_id(expected.announced)
