"""agents.delivery: every message on the broker or a stall; order kept across retries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from agents.delivery import deliver
from agents.internal import event_time


class FlakyProducer:
    """Accepts every send; delivery of the sends listed in ``fail_at`` (by send count)
    fails, the others succeed. Records what was delivered, in order."""

    def __init__(self, fail_at: set[int], refuse_at: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.fail_at = fail_at
        self.refuse_at = refuse_at
        self.sends = 0
        self.delivered: list[bytes] = []

    async def send(self, topic: str, key: Any, value: bytes, partition: Any, ts: Any, headers: Any) -> Any:
        self.sends += 1
        if self.sends in self.refuse_at:
            raise KafkaTimeoutError("refused")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.sends in self.fail_at:
            future.set_exception(KafkaTimeoutError("lost"))
        else:
            self.delivered.append(value)
            future.set_result(None)
        return future


def messages(n: int) -> list[Any]:
    return [("t", None, str(i).encode(), 0, None) for i in range(n)]


async def no_sleep(delay: float) -> None:
    no_sleep.delays.append(delay)  # type: ignore[attr-defined]


async def test_every_message_is_delivered_and_failures_resent_from_the_first_gap() -> None:
    no_sleep.delays = []  # type: ignore[attr-defined]
    producer = FlakyProducer(fail_at={3, 7})
    failures = await deliver(SimpleNamespace(producer=producer), messages(5), sleep=no_sleep)
    # send 3 (message "2") failed: "2".."4" sent again; send 7 ("3" again) failed too
    assert failures == 2
    assert producer.delivered == [b"0", b"1", b"3", b"4", b"2", b"4", b"3", b"4"]
    # the last delivery of each message is in the original order
    last = {v: i for i, v in enumerate(producer.delivered)}
    assert sorted(last, key=last.__getitem__) == [str(i).encode() for i in range(5)]
    assert no_sleep.delays == [0.2, 0.4]  # type: ignore[attr-defined]


async def test_a_refused_hand_over_is_retried_and_backoff_is_capped() -> None:
    no_sleep.delays = []  # type: ignore[attr-defined]
    producer = FlakyProducer(fail_at=set(), refuse_at=set(range(1, 9)))
    failures = await deliver(SimpleNamespace(producer=producer), messages(2), max_backoff=1.0, sleep=no_sleep)
    assert failures == 8
    assert producer.delivered == [b"0", b"1"]
    assert max(no_sleep.delays) == 1.0  # type: ignore[attr-defined]


async def test_nothing_to_send_returns_at_once() -> None:
    producer = FlakyProducer(fail_at=set())
    assert await deliver(SimpleNamespace(producer=producer), []) == 0
    assert producer.sends == 0


@pytest.mark.parametrize("stamp", [1767225600.5, 1893456000.0])
def test_event_time_is_the_message_timestamp(stamp: float) -> None:
    event = SimpleNamespace(message=SimpleNamespace(timestamp=stamp))
    assert event_time(event) == datetime.fromtimestamp(stamp, UTC)  # type: ignore[arg-type]


@pytest.mark.parametrize("stamp", [None, -1.0, 0.0])
def test_event_time_without_a_timestamp_falls_back_to_the_clock(stamp: float | None) -> None:
    event = SimpleNamespace(message=SimpleNamespace(timestamp=stamp))
    before = datetime.now(UTC)
    assert before <= event_time(event) <= datetime.now(UTC)  # type: ignore[arg-type]
