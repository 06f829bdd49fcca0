"""Delta detection, acknowledgements and the sync-run lifecycle (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.delta import (
    SyncRun,
    apply_ack,
    apply_failure,
    chunks,
    due,
    failure_backoff_us,
    is_dirty,
    select_dirty,
    sellable_quantity,
)


def test_sellable_subtracts_reservations_and_floors_at_zero() -> None:
    assert sellable_quantity(100, 30, "atp_minus_reservations") == 70
    assert sellable_quantity(10, 30, "atp_minus_reservations") == 0
    assert sellable_quantity(10, 30, "atp") == 10


def test_dirty_until_fluent_accepted_the_same_quantity() -> None:
    assert is_dirty(5, None)
    entry, changed = apply_ack(None, 5, at_us=100, batch_id="b1")
    assert changed and not is_dirty(5, entry) and is_dirty(6, entry)


def test_older_acknowledgement_never_overwrites_newer() -> None:
    newer, _ = apply_ack(None, 7, at_us=200, batch_id="b2")
    same, changed = apply_ack(newer, 3, at_us=100, batch_id="b1")
    assert not changed and same is newer and same is not None and same["qty"] == 7


def test_failure_keeps_key_dirty_with_backoff_and_redelivery_counts_once() -> None:
    entry, changed = apply_failure(None, "404 not found", 1_000, "b1", lambda n: 5_000 * n)
    assert changed and entry is not None
    assert entry["failures"] == 1 and entry["retryAt"] == 6_000 and is_dirty(3, entry)
    again, changed = apply_failure(entry, "404 not found", 1_000, "b1", lambda n: 5_000 * n)
    assert not changed and again is entry
    assert not due(entry, 5_999) and due(entry, 6_000)
    healed, _ = apply_ack(entry, 3, 7_000, "b2")
    assert healed is not None and healed["failures"] == 0 and not is_dirty(3, healed)


def test_select_dirty_skips_clean_and_waiting_keys_but_full_resync_sends_all() -> None:
    clean, _ = apply_ack(None, 1, 1, "b")
    waiting, _ = apply_failure(None, "e", 1, "b", lambda n: 10**9)
    candidates = [("a", 1, clean), ("b", 2, None), ("c", 3, waiting), ("d", 9, clean)]
    assert select_dirty(candidates, now_us=10) == [("b", 2), ("d", 9)]
    assert [k for k, _ in select_dirty(candidates, now_us=10, full_resync=True)] == ["a", "b", "c", "d"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10), max_size=200), st.integers(1, 50))
def test_chunks_cover_everything_within_the_limit(items: list[int], size: int) -> None:
    parts = list(chunks(items, size))
    assert [x for p in parts for x in p] == items
    assert all(1 <= len(p) <= size for p in parts)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.floats(0, 1))
def test_failure_backoff_grows_and_is_capped(failures: int, r: float) -> None:
    delay = failure_backoff_us(failures, 1.0, 60.0, lambda: r)
    assert 0 < delay <= 60_000_000
    assert failure_backoff_us(failures + 1, 1.0, 60.0, lambda: r) >= delay


def test_run_lifecycle_in_order_and_failure_from_anywhere() -> None:
    run = SyncRun("r1", started_at_us=0)
    for i, state in enumerate(("creating_job", "sending_batches", "polling_batches", "completed"), 1):
        run.advance(state, i)
    assert [h[0] for h in run.history] == [
        "collecting", "creating_job", "sending_batches", "polling_batches", "completed",
    ]
    assert run.finished_at_us == 4 and run.as_dict()["state"] == "completed"
    with pytest.raises(ValueError):
        run.advance("failed", 5)
    other = SyncRun("r2", started_at_us=0)
    other.advance("sending_batches", 1)
    with pytest.raises(ValueError):
        other.advance("creating_job", 2)
    other.fail("FluentUnavailable: down", 3)
    assert other.state == "failed" and other.errors == ["FluentUnavailable: down"]


@pytest.mark.parametrize(
    ("accepted", "failed", "outcome"), [(3, 0, "ok"), (0, 0, "ok"), (2, 1, "partial"), (0, 3, "rejected")]
)
def test_a_run_that_did_not_get_everything_in_is_not_a_success(
    accepted: int, failed: int, outcome: str
) -> None:
    run = SyncRun("r", started_at_us=0)
    assert run.outcome is None  # running
    run.accepted, run.failed = accepted, failed
    run.advance("completed", 1)
    assert run.as_dict()["outcome"] == outcome and run.state == "completed"
    broken = SyncRun("b", started_at_us=0)
    broken.fail("down", 1)
    assert broken.outcome == "failed"
