"""Fluent reconciliation's pure parts: a drift, what is not one, and the grouping by partition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agents.channel_files import file_key
from agents.channels import merge_progress
from agents.reconcile import merge, positions_by_partition
from stream_app.domain.delta import accepted_entry, is_dirty, reconcile_entry


def test_a_drift_records_what_fluent_holds_so_the_key_is_sent_again() -> None:
    entry = accepted_entry(40, at_us=1_000, batch_id="b1")
    new, drifted = reconcile_entry(entry, fluent_on_hand=7, read_at_us=2_000)
    assert drifted and new is not None
    assert new["qty"] == 7 and new["drift"] == {"was": 40, "fluent": 7, "at": 2_000}
    assert is_dirty(40, new) and not is_dirty(40, entry)  # the flush sends 40 again
    # comparing again (a replayed message) finds nothing new
    assert reconcile_entry(new, 7, 2_000) == (new, False)


def test_no_drift_when_equal_never_accepted_or_accepted_after_the_read() -> None:
    entry = accepted_entry(40, at_us=5_000, batch_id="b1")
    assert reconcile_entry(entry, 40, 9_000) == (entry, False)
    assert reconcile_entry(None, 3, 9_000) == (None, False)
    assert reconcile_entry(entry, 3, read_at_us=4_000) == (entry, False)  # the read is older


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_after_reconciling_the_entry_holds_fluents_quantity(accepted: int, fluent: int) -> None:
    new, drifted = reconcile_entry(accepted_entry(accepted, 1, "b"), fluent, 2)
    assert new is not None and new["qty"] == fluent and drifted == (accepted != fluent)


def test_positions_are_grouped_by_partition_and_odd_ones_skipped() -> None:
    nodes = [
        {"productRef": "A", "locationRef": "L1", "onHand": 3},
        {"productRef": "B", "locationRef": "L1", "onHand": 0},
        {"productRef": "C", "locationRef": None, "onHand": 1},
        {"productRef": "D", "locationRef": "L1", "onHand": None},
        {"productRef": "E", "locationRef": "L1", "onHand": True},
    ]
    grouped = positions_by_partition(nodes, lambda key: 0 if key.startswith("A") else 1)
    assert grouped == {0: [["A|L1", 3]], 1: [["B|L1", 0]]}


def test_runs_merge_what_every_worker_found() -> None:
    run = {"runId": "r1", "startedAt": "2026-12-01T00:00:00Z", "state": "completed", "positions": 5}
    a = {"runs": [run], "found": [{"runId": "r1", "checked": 3, "drifted": 1, "unknown": 0,
                                   "examples": [{"key": "A|L"}]}]}
    b = {"runs": [], "found": [{"runId": "r1", "checked": 2, "drifted": 1, "unknown": 1,
                                "examples": [{"key": "B|L"}]}]}
    (merged,) = merge([a, b])["runs"]
    assert (merged["checked"], merged["drifted"], merged["unknown"]) == (5, 2, 1)
    assert [e["key"] for e in merged["examples"]] == ["A|L", "B|L"]


def test_a_checkpoint_never_goes_back() -> None:
    done = {"status": "ingested", "offset": 100}
    assert merge_progress(done, {"status": "ingesting", "offset": 10}) is done
    mid = {"status": "ingesting", "offset": 50}
    assert merge_progress(mid, {"status": "ingesting", "offset": 40}) is mid
    later = {"status": "ingesting", "offset": 60}
    assert merge_progress(mid, later) is later
    assert merge_progress(None, mid) is mid
    assert file_key("WMS", "abc") == "file|WMS|abc"
