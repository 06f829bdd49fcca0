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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

log = logging.getLogger(__name__)

#: (topic name, key, value, partition or None, headers or None)
Message = tuple[str, bytes | None, bytes, int | None, Any]

#: errors after which a send is retried (anything else is a bug and propagates)
RETRIABLE: tuple[type[BaseException], ...] = (
    ProducerSendError,
    KafkaError,
    ConnectionError,
    TimeoutError,
)


async def flush_writes(app: faust.types.AppT) -> None:
    """Return once the broker has every message queued so far, table changelog writes
    included (Faust queues those in its own buffer before aiokafka sees them)."""
    producer: Any = app.producer
    while producer.buffer.size:
        await producer.buffer.flush()
    await producer.flush()


async def deliver(
    app: faust.types.AppT,
    messages: Sequence[Message],
    *,
    max_backoff: float = 30.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Send ``messages`` in order and wait until the broker has each; returns the number
    of failed attempts. After a failure everything from the first undelivered message on
    is sent again (keeps the order of a key's messages; a duplicate is harmless, a gap is
    not)."""
    producer = app.producer
    start = 0
    failures = 0
    while start < len(messages):
        pending: list[asyncio.Future[Any]] = []
        try:
            for topic, key, value, partition, headers in messages[start:]:
                future = await producer.send(topic, key, value, partition, None, headers)
                pending.append(asyncio.ensure_future(future))
            await asyncio.gather(*pending, return_exceptions=True)
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
        failures += 1
        delay = min(max_backoff, 0.1 * 2**failures)
        failed = pending[done - start]
        log.error(
            "delivery of %d of %d messages failed (attempt %d), retrying in %.1fs: %r",
            len(messages) - done, len(messages), failures, delay,
            None if failed.cancelled() else failed.exception(),
        )
        start = done
        await sleep(delay)
    return failures
