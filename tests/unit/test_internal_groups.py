"""agents.internal.handle_group: the order rule of a group of internal messages.

Consecutive inventory applies are prepared in order and completed as one run (one
changelog flush, then their hooks in order); any other kind completes the run before it
is handled; an apply whose hooks read its keys (``alone``) is completed at once, so the
hooks see its state and not a later message's. Fakes record the calls (pure unit test).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agents.internal import INVENTORY_APPLY, SYNC_ACK, handle_group
from agents.inventory import GroupedApply, StagedApply
from stream_app.broker.delivery import source_of


class Event:
    def __init__(self, n: int, key: bytes, alone: bool = False) -> None:
        self.n, self.key, self.alone = n, key, alone
        self.message = type("Message", (), {"topic": "internal", "partition": 0, "offset": n})()


def run_group(events: list[Event], most_records: int = 1000) -> list[Any]:
    calls: list[Any] = []

    async def prepare(event: Any) -> StagedApply:
        calls.append(("prepare", event.n, source_of()))  # as while processing it
        return StagedApply(event, [], [], [], 10, event.alone)

    async def complete(run: list[StagedApply]) -> None:
        calls.append(("complete", [staged.event.n for staged in run]))

    async def other(event: Any) -> None:
        calls.append(("other", event.n, source_of()))

    registry: dict[bytes, Any] = {SYNC_ACK: other}
    asyncio.run(handle_group(events, registry, GroupedApply(prepare, complete), None, most_records))  # type: ignore[arg-type]
    return calls


def test_applies_share_a_completion_until_another_kind_or_an_alone_one() -> None:
    kinds = [INVENTORY_APPLY, INVENTORY_APPLY, SYNC_ACK, INVENTORY_APPLY, INVENTORY_APPLY, INVENTORY_APPLY]
    events = [Event(n, kind, alone=(n == 3)) for n, kind in enumerate(kinds)]
    calls = [call[:2] for call in run_group(events)]
    assert calls == [
        ("prepare", 0), ("prepare", 1), ("complete", [0, 1]), ("other", 2),
        ("prepare", 3), ("complete", [3]), ("prepare", 4), ("prepare", 5), ("complete", [4, 5]),
    ]
    assert all(call[2] == "internal[0]" for call in run_group(events) if call[0] != "complete")


def test_a_run_is_completed_once_it_holds_the_most_records() -> None:
    events = [Event(n, INVENTORY_APPLY) for n in range(5)]  # 10 records each
    assert [call[1] for call in run_group(events, most_records=20) if call[0] == "complete"] == [
        [0, 1], [2, 3], [4]
    ]


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=30))
def test_every_apply_is_completed_once_in_order_before_what_follows_reads(kinds: list[Any]) -> None:
    events = [Event(n, INVENTORY_APPLY if apply else SYNC_ACK, alone) for n, (apply, alone) in enumerate(kinds)]
    calls = run_group(events)
    completed = [n for call in calls if call[0] == "complete" for n in call[1]]
    assert completed == [e.n for e in events if e.key == INVENTORY_APPLY]  # each once, in order
    done: set[int] = set()
    for call in calls:
        if call[0] == "complete":
            done.update(call[1])
        elif call[0] == "other":  # every apply before it is complete
            assert all(e.n in done for e in events[: call[1]] if e.key == INVENTORY_APPLY)
        elif call[0] == "prepare":  # an alone apply before it is complete
            assert all(e.n in done for e in events[: call[1]] if e.key == INVENTORY_APPLY and e.alone)
    assert calls == [] or calls[-1][0] in ("complete", "other")
