"""Delivery that an agent can acknowledge on: every output on the broker, or a stall.

At-least-once needs two orderings, both provided here:

* **state before announcements**: :func:`flush_writes` returns once the broker holds
  every table write queued so far (Faust's producer buffer, then aiokafka's batches).
  An agent writes its tables, calls it, and only then sends the messages that announce
  the new state: a message a customer saw always describes state the changelog keeps.
* **outputs before the offset**: :func:`deliver` returns once every message is on the
  broker, retrying with capped exponential backoff while the broker refuses. The agent
  does not return (so Faust does not acknowledge the source event) until it does: the
  stream stalls rather than skipping an output.

Messages are sent straight through the app's producer (``topic, key, value, partition,
headers``): Faust's per-message ``topic.send`` costs more than the work at 100,000
events.

Each app has a :class:`DeliveryWatch`: what :func:`deliver` saw, for health and metrics.
Every delivery and flush in progress is noted with its start (keyed by the source topic
and partition of the event being processed): one that has not completed for
``STREAM_APP_STALL_SECONDS`` is a *stalled* stream, whether the broker refuses or does
not answer. Observers see every batch once the broker holds all of it: the dead-letter
counter counts letters delivered, not letters meant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import faust
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from faust.exceptions import NotReady, ProducerSendError

from stream_app.delivery_watch import Message, watch_of

log = logging.getLogger(__name__)

class Undeliverable(Exception):
    """A message the broker will never take (too large): retrying would stall for ever."""


#: errors no retry can mend (checked before RETRIABLE: they are KafkaErrors too)
PERMANENT: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, RecordTooLargeError)

#: errors after which a send is retried (anything else is a bug and propagates)
RETRIABLE: tuple[type[BaseException], ...] = (
    ProducerSendError,
    KafkaError,
    ConnectionError,
    TimeoutError,
)


def source_of(event: faust.EventT | None = None) -> str:
    """Where the caller is: the topic and partition of ``event``, by default of the event
    being processed (a grouped stream has none: it passes its group's first event)."""
    event = event if event is not None else faust.current_event()
    if event is None:
        return "outside a stream"
    return f"{event.message.topic}[{event.message.partition}]"


@contextmanager
def waiting_on_broker(app: faust.types.AppT, source: str | None = None) -> Iterator[None]:
    """Note the stream (``source``, default :func:`source_of`) as waiting for the broker
    while the block runs: the stall report of ``/health``."""
    watch = watch_of(app)
    where = source or source_of()
    token = watch.begin(where, asyncio.get_running_loop().time())
    try:
        yield
    finally:
        watch.end(where, token)


async def flush_writes(app: faust.types.AppT, source: str | None = None) -> None:
    """Return once the broker has every message queued so far, table changelog writes
    included (Faust queues those in its own buffer before aiokafka sees them)."""
    producer: Any = app.producer
    with waiting_on_broker(app, source):
        while producer.buffer.size:
            await producer.buffer.flush()
        await producer.flush()


async def deliver(
    app: faust.types.AppT,
    messages: Sequence[Message],
    *,
    max_backoff: float = 30.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    source: str | None = None,
) -> int:
    """Send ``messages`` in order and wait until the broker has each; returns the number
    of failed attempts. After a failure everything from the first undelivered message on
    is sent again (keeps the order of a key's messages; a duplicate is harmless, a gap is
    not). ``source`` names the stream waiting (:func:`source_of`)."""
    if not messages:
        return 0
    with waiting_on_broker(app, source):
        failures = await _send_all(app.producer, messages, max_backoff, sleep)
    for observe in watch_of(app).observers:
        observe(messages)
    return failures


def batch_client(app: faust.types.AppT) -> Any:
    """The started aiokafka producer under Faust's (None: not there, or not started)."""
    client = getattr(app.producer, "_producer", None)
    return client if callable(getattr(client, "create_batch", None)) else None


async def deliver_batches(
    app: faust.types.AppT,
    topic: str,
    by_partition: dict[int, list[tuple[bytes, bytes | None]]],
    *,
    source: str | None = None,
    max_backoff: float = 30.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[int, int]:
    """Send each partition's ``(key, value)`` messages, in order, as whole aiokafka
    batches (one future per batch instead of per message: a per-key table's flush sends
    thousands) and wait until the broker has all; returns partition → offset of its last
    message. A failure sends everything again (a per-key table's flush holds each key
    once, so a repeat writes the same values)."""
    client = batch_client(app)
    if client is None:
        raise NotReady("the producer is not started")
    failures = 0
    with waiting_on_broker(app, source):
        while True:
            try:
                return await _send_batches(client, topic, by_partition)
            except PERMANENT as exc:
                raise Undeliverable(f"{exc!r}") from exc
            except RETRIABLE as exc:
                failures += 1
                delay = min(max_backoff, 0.1 * 2**failures)
                log.error("batch delivery to %s failed (attempt %d), retrying in %.1fs: %r",
                          topic, failures, delay, exc)
                await sleep(delay)


async def _send_batches(
    client: Any, topic: str, by_partition: dict[int, list[tuple[bytes, bytes | None]]]
) -> dict[int, int]:
    sent: list[tuple[int, int, Any]] = []  # (partition, messages, future)

    async def submit(builder: Any, partition: int, count: int) -> None:
        builder.close()  # complete: aiokafka sends a closed batch without lingering
        sent.append((partition, count, await client.send_batch(builder, topic, partition=partition)))

    for partition, items in by_partition.items():
        builder, count = client.create_batch(), 0
        for key, value in items:
            if builder.append(key=key, value=value, timestamp=None) is None:
                await submit(builder, partition, count)
                builder, count = client.create_batch(), 0
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise Undeliverable(f"a message of {len(value or b'')} bytes exceeds a batch")
            count += 1
        if count:
            await submit(builder, partition, count)
    results = await asyncio.gather(*(future for _, _, future in sent))
    last: dict[int, int] = {}
    for (partition, count, _), meta in zip(sent, results, strict=True):
        last[partition] = max(last.get(partition, -1), meta.offset + count - 1)
    return last


def table_deliver(
    app: faust.types.AppT,
) -> Callable[[str, dict[int, list[tuple[bytes, bytes | None]]], str | None], Awaitable[dict[int, int]]]:
    """:func:`deliver_batches` in the shape per-key tables flush with (tables.keyed)."""

    async def send(
        topic: str, by_partition: dict[int, list[tuple[bytes, bytes | None]]], source: str | None
    ) -> dict[int, int]:
        return await deliver_batches(app, topic, by_partition, source=source)

    return send


async def _send_all(
    producer: Any,
    messages: Sequence[Message],
    max_backoff: float,
    sleep: Callable[[float], Awaitable[None]],
) -> int:
    start = 0
    failures = 0
    while start < len(messages):
        pending: list[asyncio.Future[Any]] = []
        try:
            for topic, key, value, partition, headers in messages[start:]:
                future = await producer.send(topic, key, value, partition, None, headers)
                pending.append(asyncio.ensure_future(future))
            await asyncio.gather(*pending, return_exceptions=True)
        except PERMANENT as exc:
            raise Undeliverable(f"{exc!r}") from exc
        except RETRIABLE as exc:  # refused while handing over: send it all again
            failures += 1
            delay = min(max_backoff, 0.1 * 2**failures)
            log.error("delivery failed (attempt %d), retrying in %.1fs: %r", failures, delay, exc)
            await sleep(delay)
            continue
        done = start
        for future in pending:
            if future.cancelled() or future.exception() is not None:
                break
            done += 1
        if done == len(messages):
            return failures
        failed = pending[done - start]
        error = None if failed.cancelled() else failed.exception()
        if isinstance(error, PERMANENT):
            raise Undeliverable(f"{error!r}") from error
        failures += 1
        delay = min(max_backoff, 0.1 * 2**failures)
        log.error(
            "delivery of %d of %d messages failed (attempt %d), retrying in %.1fs: %r",
            len(messages) - done, len(messages), failures, delay, error,
        )
        start = done
        await sleep(delay)
    return failures
