"""Web requests first (stream_app.web.priority + stream_app.pacing.Foreground) on a real
aiohttp server: while long work runs in slices on the same loop, a request waits for the
slices under way when it arrived, not for three rounds of them (parse, wake the
connection's task, start the handler's task)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web, web_protocol

from stream_app.metrics import Metrics
from stream_app.pacing import FOREGROUND, breathe
from stream_app.web.priority import install, problem

SLICE_SECONDS = 0.002


async def slices_per_request(most: float, busy_tasks: int = 3, requests: int = 30) -> list[int]:
    """Slices of long work run from each request's send to its handler's start."""
    FOREGROUND.most = most
    assert install(FOREGROUND)
    slices = 0
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(slices)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    done = False

    async def long_work() -> None:
        nonlocal slices
        while not done:
            until = time.perf_counter() + SLICE_SECONDS
            while time.perf_counter() < until:  # a slice of CPU work, holding the loop
                pass
            slices += 1
            await breathe()

    workers = [asyncio.create_task(long_work()) for _ in range(busy_tasks)]
    spent: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:  # one kept-alive connection
            for _ in range(requests):
                sent = slices
                async with session.get(f"http://127.0.0.1:{port}/x") as response:
                    assert response.status == 200
                spent.append(seen[-1] - sent)
    finally:
        done = True
        await asyncio.gather(*workers)
        await runner.cleanup()
        FOREGROUND.most = 0
    return spent


def test_a_request_waits_for_the_slices_under_way_not_three_rounds_of_them() -> None:
    assert problem() is None
    waits, metrics = FOREGROUND.gave_way, Metrics()
    first = asyncio.run(slices_per_request(most=1.0))
    given = FOREGROUND.gave_way - waits
    plain = asyncio.run(slices_per_request(most=0))
    assert FOREGROUND.gave_way - waits == given >= 30  # web first off: nothing waits
    scraped = metrics.render().decode()  # what it cost the stream, on /metrics
    assert f"stream_app_web_first_waits_total {float(FOREGROUND.gave_way)}" in scraped
    print(f"slices before a handler starts: web first {sorted(first)}, off {sorted(plain)}")
    # three busy tasks: off, a request waits three rounds of 3 slices; first, one round
    assert sorted(first)[len(first) // 2] <= 3
    assert sorted(plain)[len(plain) // 2] >= 9
    assert FOREGROUND.waiting == 0


def test_an_aiohttp_without_the_hooked_methods_is_left_alone(monkeypatch: Any) -> None:
    class Other:  # an aiohttp whose request handler changed shape
        def data_received(self, data: bytes) -> None: ...

    monkeypatch.setattr(web_protocol, "RequestHandler", Other)
    found = problem()
    assert found is not None and "_handle_request" in found
    assert not install(FOREGROUND)
    assert not hasattr(Other.data_received, "__wrapped__")
