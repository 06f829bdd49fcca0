"""Grouping a Faust stream's events without a fixed wait.

``Stream.take_events(max, within)`` wakes every ``within`` seconds and yields what it
buffered since: every event waits up to ``within`` (on average half of it) even when the
agent is idle. :func:`take_ready` yields an event at once when the previous group started
at least ``spacing`` seconds ago (a quiet stream: no wait at all), and otherwise when that
spacing is over, with everything that arrived meanwhile — including while the previous
group was processed. Under load groups therefore start at most every ``spacing`` seconds
and grow with the backlog, so the per-group work (one changelog write per touched chunk,
one internal message per partition, one producer hand-off) stays amortised; at light load
nothing waits.

Built on the same Faust stream hooks as ``take_events`` (a processor filling a buffer, the
passive drainer, manual acks), so offsets are acked only after the group is processed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust


async def take_ready(
    stream: faust.StreamT[Any], max_: int, spacing: float = 0.0
) -> AsyncIterator[list[faust.EventT]]:
    """Yield lists of at most ``max_`` events, groups starting at least ``spacing``
    seconds apart; an event that arrives when the last group started longer ago than that
    is yielded at once.

    Events are acked after the body of the ``async for`` has processed the group; not
    when the body raised or was cancelled (Faust's own streams ack those too, so a stop
    in the middle of a group would commit offsets whose outputs never went out).
    """
    if max_ < 1:
        raise ValueError("max_ must be at least 1")
    if spacing < 0:
        raise ValueError("spacing must not be negative")
    events: list[faust.EventT] = []
    ready = asyncio.Event()  # at least one event buffered
    full = asyncio.Event()  # max_ events buffered
    room = asyncio.Event()  # the buffer may take events (fewer than max_ in it)
    room.set()
    s: Any = stream  # Faust's private stream hooks, as take_events uses them
    clock = asyncio.get_running_loop().time

    async def add_to_buffer(value: Any) -> Any:
        while not room.is_set():
            await s.wait(room)
            if s.should_stop:
                return value
        event = s.current_event
        if event is None:  # pragma: no cover - Faust always sets it for a processor
            raise RuntimeError("take_ready: no current event in the stream processor")
        events.append(event)
        ready.set()
        if len(events) >= max_:
            full.set()
            room.clear()
        return value

    s.enable_acks = False  # acked below, once the group is processed
    s.add_processor(add_to_buffer)
    s._enable_passive(aiter(s.channel))
    started = float("-inf")
    while not s.should_stop:
        await s.wait_for_stopped(ready)
        wait = started + spacing - clock()
        if wait > 0 and not full.is_set():
            await s.wait_for_stopped(full, timeout=wait)
        if not events:
            continue
        started = clock()
        group = events[:max_]  # what arrives while it is processed forms the next group
        processed = False
        try:
            yield group
            processed = True
        finally:
            del events[: len(group)]
            if not events:
                ready.clear()
            if len(events) < max_:
                full.clear()
                room.set()
            # a body that raised or was cancelled (a stop mid-flush) may not have put on
            # the broker what the group caused: unacked, the group is read again later
            if processed:
                for event in group:
                    await s.ack(event)
