"""stream_app.broker.delivery: every message on the broker or a stall; order kept across retries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from agents.books import Outbox
from agents.internal import event_time
from stream_app.broker.delivery import deliver


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


async def test_a_stream_is_stalled_while_its_outputs_are_refused_and_observers_see_deliveries() -> None:
    from stream_app.delivery_watch import watch_of

    app = SimpleNamespace(producer=FlakyProducer(fail_at=set(), refuse_at={1, 2, 3}))
    seen: list[int] = []
    stalled_during: list[dict[str, float]] = []
    watch = watch_of(app)
    watch.observers.append(lambda delivered: seen.append(len(delivered)))

    async def sleep_and_look(delay: float) -> None:
        stalled_during.append(watch.stalls(asyncio.get_running_loop().time() + 100, 50))

    await deliver(app, messages(3), sleep=sleep_and_look)
    assert stalled_during and all(s == {"outside a stream": pytest.approx(100, abs=5)} for s in stalled_during)
    assert watch.waiting == {}  # flowing again
    assert seen == [3]  # observed once, after the broker had all of it


async def test_the_end_of_one_wait_does_not_hide_another_of_the_same_stream() -> None:
    """The ingest commits a group while it delivers the next one (both "topic[p]"): a
    refused commit that ends must leave the stuck delivery in the stall report."""
    from stream_app.broker.delivery import waiting_on_broker
    from stream_app.delivery_watch import watch_of

    app = SimpleNamespace()
    watch = watch_of(app)
    with waiting_on_broker(app, "t[0]"):
        since = watch.waiting["t[0]"]
        with waiting_on_broker(app, "t[0]"):  # the commit, started later, ends first
            pass
        assert watch.waiting == {"t[0]": since}
        assert set(watch.stalls(since + 10, 5)) == {"t[0]"}
    assert watch.waiting == {}


async def test_a_message_the_broker_will_never_take_is_not_retried_for_ever() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    from stream_app.broker.delivery import Undeliverable

    class TooLarge(FlakyProducer):
        async def send(self, *args: Any) -> Any:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(MessageSizeTooLargeError())
            return future

    app = SimpleNamespace(producer=TooLarge(fail_at=set()))
    with pytest.raises(Undeliverable):
        await deliver(app, messages(1), sleep=no_sleep)


def test_a_dead_letter_always_fits() -> None:
    import hashlib

    from agents.internal import dead_letter_message
    from stream_app.delivery_watch import watch_of

    app = SimpleNamespace()
    watch_of(app).dead_letter_max_bytes = 1024
    dlq = SimpleNamespace(app=app, get_topic_name=lambda: "x-dlq")
    big = b"x" * 2_000_000
    event = SimpleNamespace(
        key=b"k", value=big, message=SimpleNamespace(topic="x", partition=1, offset=7)
    )
    topic, key, value, _, headers = dead_letter_message(dlq, event, "too big")  # type: ignore[arg-type]
    found = dict(headers)
    assert (topic, key, len(value)) == ("x-dlq", b"k", 1024)
    assert found["dlq-original-bytes"] == b"2000000"
    assert found["dlq-original-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert found["dlq-truncated"] == b"true" and found["dlq-reason"] == b"too big"
    small = SimpleNamespace(key=None, value=b"{}", message=event.message)
    _, _, value, _, headers = dead_letter_message(dlq, small, "bad")  # type: ignore[arg-type]
    assert value == b"{}" and "dlq-truncated" not in dict(headers)


class LoggingProducer:
    """Records, in order, when the queued writes were confirmed and what was sent."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.buffer = SimpleNamespace(size=0, flush=self._noop)

    async def _noop(self) -> None:
        return None

    async def flush(self) -> None:
        self.log.append("writes on the broker")

    async def send(self, topic: str, key: Any, value: bytes, partition: Any, ts: Any, headers: Any) -> Any:
        self.log.append(f"sent {topic}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


@pytest.mark.parametrize("wrote", [True, False])
async def test_results_are_answered_once_the_writes_are_on_the_broker_before_their_messages(wrote: bool) -> None:
    """An order result is handed to the waiting request after every write queued so far
    is confirmed (also when the event wrote nothing itself: a resent order's recorded
    result may stand on another agent's write still on its way), and before the messages
    are sent: the answer never describes state the changelog may lose, and it does not
    wait for the result's own round trip."""
    log: list[str] = []
    out = Outbox(wrote=wrote)
    out.add_result(Topic("results"), "o-1", {"orderId": "o-1", "success": True})
    out.add(Topic("events"), b"k", {"e": 1}, 0)
    await out.flush(SimpleNamespace(producer=LoggingProducer(log)),
                    lambda order_id, result: log.append(f"answered {order_id}"))
    assert log == ["writes on the broker", "answered o-1", "sent results", "sent events"]


async def test_without_results_nor_writes_nothing_waits_for_the_broker_before_sending() -> None:
    log: list[str] = []
    out = Outbox()
    out.add(Topic("events"), b"k", {"e": 1}, 0)
    await out.flush(SimpleNamespace(producer=LoggingProducer(log)), lambda *_: log.append("answered"))
    assert log == ["sent events"]
