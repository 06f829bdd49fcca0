"""A file's checkpoints (agents.channel_files.Checkpoints): sent one at a time, in order,
coalesced to the newest; every wait ends once a checkpoint at or past it is durable; a
failed send fails the waits it covered and the next hand-over sends again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.channel_files import Checkpoints


class Broker:
    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_at = fail_at

    async def send(self, progress: dict[str, Any]) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            if progress["offset"] == self.fail_at:
                self.fail_at = None
                raise ConnectionError("broker went away")
            self.sent.append(progress["offset"])
        finally:
            self.in_flight -= 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=30))
def test_checkpoints_are_ordered_coalesced_and_cover_every_wait(pauses: list[int]) -> None:
    async def main() -> None:
        broker = Broker()
        checkpoints = Checkpoints(broker.send)
        waits = []
        for offset, pause in enumerate(pauses, start=1):
            waits.append((offset, checkpoints.covering({"offset": offset * 100})))
            for _ in range(pause):
                await asyncio.sleep(0)
        for offset, wait in waits:
            await asyncio.wait_for(wait, 5)
            assert any(sent >= offset * 100 for sent in broker.sent)  # durable when done
        assert broker.sent == sorted(set(broker.sent))  # in order, never twice
        assert broker.sent[-1] == len(pauses) * 100  # the newest is sent
        assert broker.most_in_flight == 1 and checkpoints.sent == len(broker.sent)

    asyncio.run(main())


async def test_many_hand_overs_during_one_send_become_one_checkpoint() -> None:
    broker = Broker()
    checkpoints = Checkpoints(broker.send)
    waits = [checkpoints.covering({"offset": n}) for n in range(1, 11)]
    await asyncio.gather(*waits)
    assert broker.sent == [10]


async def test_a_failed_send_fails_the_waits_it_covered_then_sends_again() -> None:
    broker = Broker(fail_at=2)
    checkpoints = Checkpoints(broker.send)
    first = checkpoints.covering({"offset": 1})
    await first
    second = checkpoints.covering({"offset": 2})
    with pytest.raises(ConnectionError):
        await second
    await checkpoints.covering({"offset": 3})
    assert broker.sent == [1, 3]
