"""``take_ready``: groups without a fixed wait, bounded, in order, acked after the body.

Runs a Faust agent in its in-memory test context (no broker: the grouping is Faust
stream machinery only; the intake that uses it runs against the real broker in the
integration and e2e tests)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import faust

from stream_app.broker.batching import take_ready

_apps = itertools.count()


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def grouping_agent(
    max_: int, gate: asyncio.Event | None = None, spacing: float = 0.0
) -> tuple[Any, list[list[Any]]]:
    """An agent recording each group's events; it waits on ``gate`` inside its first group."""
    app = faust.App(f"batching-{next(_apps)}", store="memory://", value_serializer="raw")
    app.finalize()
    app.flow_control.resume()
    groups: list[list[Any]] = []

    @app.agent(app.topic("in", value_serializer="raw"))
    async def agent(stream: faust.StreamT[bytes]) -> None:
        async for events in take_ready(stream, max_, spacing):
            groups.append(list(events))
            if gate is not None and len(groups) == 1:
                await gate.wait()

    return agent, groups


def values(groups: list[list[Any]]) -> list[list[bytes]]:
    return [[event.value for event in group] for group in groups]


async def test_a_single_event_is_yielded_at_once_not_after_a_period() -> None:
    agent, groups = grouping_agent(max_=1000, spacing=30.0)
    async with agent.test_context() as ctx:
        started = time.monotonic()
        await ctx.put(b"a", wait=False)
        # take_events(1000, within) would hold it for `within`; nothing fills the group
        await wait_until(lambda: bool(groups), within=2.0)
        assert values(groups) == [[b"a"]]
        assert time.monotonic() - started < 2.0


async def test_events_arriving_while_a_group_is_processed_form_the_next_groups() -> None:
    gate = asyncio.Event()
    agent, groups = grouping_agent(max_=3, gate=gate)
    async with agent.test_context() as ctx:
        await ctx.put(b"a", wait=False)
        await wait_until(lambda: len(groups) == 1)
        first = groups[0][0]
        for value in (b"b", b"c", b"d", b"e", b"f", b"g", b"h"):
            await ctx.put(value, wait=False)
        # inside the body: the event is not acked yet, and nothing joined its group
        assert not first.message.acked
        assert values(groups) == [[b"a"]]
        gate.set()
        await wait_until(lambda: sum(map(len, groups)) == 8)
        assert first.message.acked
        got = values(groups)
        assert [v for group in got for v in group] == [bytes([c]) for c in b"abcdefgh"]
        assert all(1 <= len(group) <= 3 for group in got)
        assert len(got[1]) > 1, f"what waited was not grouped: {got}"


async def test_groups_start_at_least_spacing_apart_and_take_what_arrived_meanwhile() -> None:
    agent, groups = grouping_agent(max_=1000, spacing=1.0)
    async with agent.test_context() as ctx:
        await ctx.put(b"a", wait=False)
        await wait_until(lambda: len(groups) == 1, within=0.9)  # quiet before: at once
        first = time.monotonic()
        await ctx.put(b"b", wait=False)
        await ctx.put(b"c", wait=False)
        await wait_until(lambda: len(groups) == 2, within=5.0)
        assert time.monotonic() - first >= 0.8  # held until the spacing was over ...
        assert values(groups) == [[b"a"], [b"b", b"c"]]  # ... and grouped


async def test_a_full_group_does_not_wait_for_the_spacing() -> None:
    agent, groups = grouping_agent(max_=2, spacing=30.0)
    async with agent.test_context() as ctx:
        await ctx.put(b"a", wait=False)
        await wait_until(lambda: len(groups) == 1)
        await ctx.put(b"b", wait=False)
        await ctx.put(b"c", wait=False)
        await wait_until(lambda: len(groups) == 2, within=5.0)  # not 30 s
        assert values(groups) == [[b"a"], [b"b", b"c"]]


async def test_max_below_one_is_refused() -> None:
    try:
        generator = take_ready(None, 0)  # type: ignore[arg-type]
        await generator.__anext__()
    except ValueError as exc:
        assert "at least 1" in str(exc)
    else:
        raise AssertionError("max_=0 accepted")


async def test_a_group_whose_body_raised_is_not_acked() -> None:
    app = faust.App(f"batching-{next(_apps)}", store="memory://", value_serializer="raw")
    app.finalize()
    app.flow_control.resume()
    groups: list[list[Any]] = []
    failed: list[str] = []

    @app.agent(app.topic("in", value_serializer="raw"))
    async def agent(stream: faust.StreamT[bytes]) -> None:
        try:
            async for events in take_ready(stream, 10):
                groups.append(list(events))
                if events[0].value == b"bad":
                    raise RuntimeError("the group's flush failed")
        except RuntimeError as exc:
            failed.append(str(exc))
            raise

    async with agent.test_context() as ctx:
        await ctx.put(b"good", wait=False)
        await wait_until(lambda: bool(groups) and groups[0][0].message.acked)
        await ctx.put(b"bad", wait=False)
        await wait_until(lambda: bool(failed))
        assert [group[0].value for group in groups] == [b"good", b"bad"]
        assert not groups[1][0].message.acked, "offsets of a failed group would be committed"
