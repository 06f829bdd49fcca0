"""Grouping a Faust stream's events without a fixed wait.

``Stream.take_events(max, within)`` wakes every ``within`` seconds and yields what it
buffered since: every event waits up to ``within`` (on average half of it) even when the
agent is idle. :func:`take_ready` yields as soon as an event is buffered, together with
every event that arrived while the previous group was being processed: one event at a
time when traffic is light, larger groups exactly when the agent falls behind. Latency
then costs nothing at light load, and the per-group work (one changelog write per touched
chunk, one producer hand-off) still amortises under a burst.

Built on the same Faust stream hooks as ``take_events`` (a processor filling a buffer, the
passive drainer, manual acks), so offsets are acked only after the group is processed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust


async def take_ready(stream: faust.StreamT[Any], max_: int) -> AsyncIterator[list[faust.EventT]]:
    """Yield lists of at most ``max_`` events: each as soon as one event is buffered.

    Events are acked after the body of the ``async for`` has processed the group.
    """
    if max_ < 1:
        raise ValueError("max_ must be at least 1")
    events: list[faust.EventT] = []
    ready = asyncio.Event()  # at least one event buffered
    room = asyncio.Event()  # the buffer may take events (not full, not being processed)
    room.set()
    s: Any = stream  # Faust's private stream hooks, as take_events uses them

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
            room.clear()
        return value

    s.enable_acks = False  # acked below, once the group is processed
    s.add_processor(add_to_buffer)
    s._enable_passive(aiter(s.channel))
    while not s.should_stop:
        await s.wait_for_stopped(ready)
        if not events:
            continue
        room.clear()  # nothing joins the group while it is processed
        group = list(events)
        try:
            yield group
        finally:
            events.clear()
            ready.clear()
            for event in group:
                await s.ack(event)
            room.set()

