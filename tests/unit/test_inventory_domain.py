"""ATP and last-writer-wins: unit and property tests of the pure inventory rules."""

from __future__ import annotations

import copy
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.inventory import (
    BufferPolicy,
    aggregate,
    apply_change,
    channels_view,
    empty_state,
    expected_arrivals,
)
from stream_app.records import ExpectedArrival, StockChange, parse_timestamp

NO_BUFFERS = BufferPolicy()


def change(event_id: str, channel: str, on_hand: int, reserved: int, ts: int, buffer: int | None = None,
           deleted: bool = False) -> StockChange:
    return StockChange(event_id, channel, "S", "L", on_hand, reserved, buffer, f"t{ts}", ts, deleted)


def test_spec_example_two_channels() -> None:
    state = empty_state()
    apply_change(state, change("a", "A", 100, 20, 1, buffer=5))
    apply_change(state, change("b", "B", 95, 15, 1, buffer=5))
    agg = aggregate(state, NO_BUFFERS, oversell_protection=True)
    assert (agg.total_on_hand, agg.total_reserved, agg.buffer, agg.atp) == (195, 35, 5, 155)


def test_late_older_event_and_duplicate_change_nothing() -> None:
    state = empty_state()
    assert apply_change(state, change("a2", "A", 100, 20, 10))
    before = copy.deepcopy(state)
    assert not apply_change(state, change("a1", "A", 1, 0, 5))
    assert not apply_change(state, change("a2", "A", 100, 20, 10))
    assert state == before


def test_same_timestamp_ties_break_by_event_id_deterministically() -> None:
    s1, s2 = empty_state(), empty_state()
    x, y = change("x", "A", 1, 0, 7), change("y", "A", 2, 0, 7)
    apply_change(s1, x)
    apply_change(s1, y)
    apply_change(s2, y)
    apply_change(s2, x)
    assert s1 == s2 and s1["channels"]["A"]["onHand"] == 2


def test_removal_by_zeros_or_delete_and_tombstone_blocks_older() -> None:
    state = empty_state()
    apply_change(state, change("1", "A", 10, 0, 1))
    apply_change(state, change("2", "B", 20, 0, 1))
    apply_change(state, change("3", "A", 0, 0, 2))
    apply_change(state, change("4", "B", 0, 0, 2, deleted=True))
    apply_change(state, change("0", "B", 99, 0, 1))  # older than the delete
    assert aggregate(state, NO_BUFFERS, True).atp == 0
    assert channels_view(state, NO_BUFFERS) == {}


def test_buffer_is_max_over_channels_with_defaults() -> None:
    policy = BufferPolicy(default=2, per_channel={"MARKET": 9})
    state = empty_state()
    apply_change(state, change("1", "WMS", 50, 0, 1))
    apply_change(state, change("2", "MARKET", 5, 0, 1))
    apply_change(state, change("3", "POS", 5, 0, 1, buffer=4))
    agg = aggregate(state, policy, True)
    assert agg.buffer == 9 and agg.atp == 60 - 9


def test_oversell_protection_floors_at_zero() -> None:
    state = empty_state()
    apply_change(state, change("1", "A", 3, 10, 1, buffer=5))
    assert aggregate(state, NO_BUFFERS, True).atp == 0
    assert aggregate(state, NO_BUFFERS, False).atp == 3 - 10 - 5


def test_expected_arrivals_latest_per_ref_and_zero_removes() -> None:
    state = empty_state()
    apply_change(state, ExpectedArrival("1", "PO1", "S", "L", 30, "2026-12-01", "t", 1))
    apply_change(state, ExpectedArrival("2", "PO2", "S", "L", 5, "2026-11-30", "t", 1))
    apply_change(state, ExpectedArrival("3", "PO1", "S", "L", 40, "2026-12-02", "t", 2))
    assert expected_arrivals(state) == [
        {"ref": "PO2", "quantity": 5, "expectedOn": "2026-11-30"},
        {"ref": "PO1", "quantity": 40, "expectedOn": "2026-12-02"},
    ]
    apply_change(state, ExpectedArrival("4", "PO2", "S", "L", 0, "2026-11-30", "t", 3))
    apply_change(state, ExpectedArrival("0", "PO2", "S", "L", 7, "2026-11-30", "t", 0))
    assert [a["ref"] for a in expected_arrivals(state)] == ["PO1"]


def test_timestamps_iso_naive_offset_and_epoch_millis_agree() -> None:
    assert parse_timestamp("2026-11-20T10:00:00Z")[1] == parse_timestamp("2026-11-20T11:00:00+01:00")[1]
    assert parse_timestamp("2026-11-20T10:00:00")[1] == parse_timestamp(1_795_168_800_000)[1]


events = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C"]),
        st.integers(0, 500),
        st.integers(0, 500),
        st.integers(0, 30),
        st.one_of(st.none(), st.integers(0, 20)),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


def build(evs: list[tuple[str, int, int, int, int | None, bool]]) -> list[StockChange]:
    return [
        change(f"e{i}", ch, oh, res, ts, buf, deleted)
        for i, (ch, oh, res, ts, buf, deleted) in enumerate(evs)
    ]


@settings(max_examples=200, deadline=None)
@given(events, st.randoms(use_true_random=False))
def test_property_order_and_redelivery_do_not_matter(evs: list, rnd: random.Random) -> None:
    changes = build(evs)
    in_order = empty_state()
    for c in changes:
        apply_change(in_order, c)
    shuffled = changes + rnd.sample(changes, k=len(changes) // 2)  # redeliveries
    rnd.shuffle(shuffled)
    any_order = empty_state()
    for c in shuffled:
        apply_change(any_order, c)
    assert any_order == in_order


@settings(max_examples=200, deadline=None)
@given(events, st.booleans())
def test_property_atp_matches_the_latest_record_per_channel(evs: list, protect: bool) -> None:
    changes = build(evs)
    state = empty_state()
    for c in changes:
        apply_change(state, c)
    latest: dict[str, StockChange] = {}
    for c in changes:
        cur = latest.get(c.channel)
        if cur is None or (c.updated_at_us, c.event_id) > (cur.updated_at_us, cur.event_id):
            latest[c.channel] = c
    live = [c for c in latest.values() if not (c.deleted or (c.on_hand == 0 and c.reserved == 0))]
    on_hand = sum(c.on_hand for c in live)
    reserved = sum(c.reserved for c in live)
    buffer = max([c.buffer or 0 for c in live], default=0)
    agg = aggregate(state, NO_BUFFERS, protect)
    assert (agg.total_on_hand, agg.total_reserved, agg.buffer) == (on_hand, reserved, buffer)
    expected_atp = max(0, max(0, on_hand - reserved) - buffer) if protect else on_hand - reserved - buffer
    assert agg.atp == expected_atp
    if protect:
        assert agg.atp >= 0


def test_a_record_that_changes_nothing_is_a_duplicate_or_stale() -> None:
    from stream_app.domain.inventory import apply_change, empty_state, not_applied_reason
    from stream_app.records import StockChange

    def change(event_id: str, at_us: int) -> StockChange:
        return StockChange(event_id, "WMS", "S", "L", 5, 0, None, "t", at_us)

    state = empty_state()
    assert apply_change(state, change("e2", 2_000))
    assert not apply_change(state, change("e2", 2_000))
    assert not_applied_reason(state, change("e2", 2_000)) == "duplicate"
    assert not apply_change(state, change("e1", 1_000))
    assert not_applied_reason(state, change("e1", 1_000)) == "stale"
