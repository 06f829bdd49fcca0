"""RestPoller against a real aiohttp upstream on loopback (no broker): pagination by cursor
and by next url, ETag/304, retries (429 + Retry-After, 5xx, timeouts), errors that are
not retried, the rate limiter, rejected records, and the auth secret kept out of logs,
error messages and reprs. Waits between retries go to a recording ``sleep``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiolimiter import AsyncLimiter

from stream_app.connectors.config import RestChannel
from stream_app.connectors.rest import RestChannelError, RestPage, RestPoller

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TOKEN = "Bearer s3cr3t-t0ken-XYZ"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Upstream:
    """A loopback REST upstream: ``handler`` answers, ``seen`` records every request."""

    url: str = ""
    handler: Handler | None = None
    seen: list[web.Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        assert self.handler is not None
        return await self.handler(request)

    def paths(self) -> list[str]:
        return [r.path_qs for r in self.seen]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield up
    up.release.set()  # a deliberately hung handler ends
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class CountingLimiter(AsyncLimiter):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.acquired = 0

    async def acquire(self, amount: float = 1) -> None:
        self.acquired += 1
        await super().acquire(amount)


def channel(url: str, **extra: Any) -> RestChannel:
    return RestChannel.model_validate(
        {
            "name": "MKT",
            "kind": "rest",
            "url": url,
            "recordsPath": "$.items[*]",
            "nextCursorPath": "$.next",
            "mapping": {
                "fields": {"sku": "sku", "location": "store", "onHand": "qty", "updatedAt": "ts"}
            },
            **extra,
        }
    )


def poller(ch: RestChannel, session: aiohttp.ClientSession, **kw: Any) -> RestPoller:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("limiter", AsyncLimiter(1000, 1))
    kw.setdefault("now", lambda: NOW)
    kw.setdefault("rng", lambda: 0.0)
    return RestPoller(ch, session=session, **kw)


async def collect(p: RestPoller, state: dict[str, Any] | None = None) -> list[RestPage]:
    return [page async for page in p.poll(state or {})]


def item(
    sku: str, qty: Any = 5, ts: str | None = "2026-03-01T10:00:00Z", **more: Any
) -> dict[str, Any]:
    return {"sku": sku, "store": "S1", "qty": qty, **({"ts": ts} if ts else {}), **more}


def cursor_pages(pages: dict[str | None, tuple[list[Any], str | None]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        items, nxt = pages[request.query.get("cursor")]
        return web.json_response({"items": items, "next": nxt})

    return handler


async def test_cursor_pagination_over_three_pages_keeps_the_url_query(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.handler = cursor_pages(
        {
            None: ([item("A"), item("B")], "c2"),
            "c2": ([item("C")], "c 3&x"),
            "c 3&x": ([item("D")], None),
        }
    )
    p = poller(channel(f"{upstream.url}/stock?region=eu"), session)
    pages = await collect(p)
    assert [pg.page for pg in pages] == [1, 2, 3]
    assert [[r["sku"] for r in pg.records] for pg in pages] == [["A", "B"], ["C"], ["D"]]
    assert [r.query.get("cursor") for r in upstream.seen] == [None, "c2", "c 3&x"]
    assert all(r.query["region"] == "eu" for r in upstream.seen)
    assert [pg.state["cursor"] for pg in pages] == ["c2", "c 3&x", None]
    assert [pg.last for pg in pages] == [False, False, True]
    record = pages[0].records[0]
    assert record["channel"] == "MKT"
    assert record["eventId"] == "MKT:A|S1:2026-03-01T10:00:00Z"
    again = await collect(poller(channel(f"{upstream.url}/stock?region=eu"), session))
    assert [r["eventId"] for pg in again for r in pg.records] == [
        r["eventId"] for pg in pages for r in pg.records
    ]
    assert p.stats["requestsTotal"] == 3 and p.stats["pagesTotal"] == 3
    assert p.stats["recordsTotal"] == 4 and p.stats["lastStatus"] == 200


async def test_snapshot_feed_ignores_the_cursor_an_incremental_feed_resumes_from_it(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.handler = cursor_pages(
        {None: ([item("A")], "c2"), "c2": ([item("B")], "c3"), "c3": ([item("C")], None)}
    )
    snapshot = await collect(poller(channel(upstream.url), session), {"cursor": "c3"})
    assert [pg.records[0]["sku"] for pg in snapshot] == ["A", "B", "C"]
    upstream.seen.clear()
    feed = poller(channel(upstream.url, resumeFromCursor=True), session)
    pages = await collect(feed, {"cursor": "c2"})
    assert [pg.records[0]["sku"] for pg in pages] == ["B", "C"]
    assert [r.query.get("cursor") for r in upstream.seen] == ["c2", "c3"]
    # the end of the feed: the last page's own cursor, fetched again next poll
    assert pages[-1].state["cursor"] == "c3"


async def test_empty_page_and_max_pages_end_the_walk(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.handler = cursor_pages({None: ([item("A")], "c2"), "c2": ([], "c3")})
    pages = await collect(poller(channel(upstream.url), session))
    assert [len(pg.records) for pg in pages] == [1, 0] and pages[-1].last
    upstream.handler = cursor_pages({None: ([item("A")], "c2"), "c2": ([item("B")], "c3")})
    upstream.seen.clear()
    pages = await collect(poller(channel(upstream.url, maxPages=2), session))
    assert len(pages) == 2 and len(upstream.seen) == 2
    assert pages[-1].last and pages[-1].state["cursor"] == "c3" and pages[-1].state["etag"] is None


async def test_next_url_pagination_relative_and_absolute(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("page", "1"))
        nxt = {1: "/v2/stock?page=2", 2: f"{upstream.url}/v2/stock?page=3", 3: None}[n]
        return web.json_response({"data": [item(f"P{n}")], "links": {"next": nxt}})

    upstream.handler = handler
    ch = channel(
        f"{upstream.url}/v2/stock",
        recordsPath="$.data[*]",
        nextCursorPath=None,
        nextUrlPath="$.links.next",
    )
    pages = await collect(poller(ch, session))
    assert [pg.records[0]["sku"] for pg in pages] == ["P1", "P2", "P3"]
    assert upstream.paths() == ["/v2/stock", "/v2/stock?page=2", "/v2/stock?page=3"]
    assert pages[0].state["cursor"] == f"{upstream.url}/v2/stock?page=2"


async def test_a_next_url_on_another_origin_is_refused(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": [item("A")], "next": "http://evil.example/steal"})

    upstream.handler = handler
    ch = channel(upstream.url, recordsPath="$.data[*]", nextCursorPath=None, nextUrlPath="$.next")
    with pytest.raises(RestChannelError, match="not on"):
        await collect(poller(ch, session))
    assert len(upstream.seen) == 1


async def test_etag_then_304_yields_one_not_modified_page(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        cursor = request.query.get("cursor")
        if cursor is None and request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        items, nxt, tag = {None: ([item("A")], "c2", '"v1"'), "c2": ([item("B")], None, '"p2"')}[
            cursor
        ]
        return web.json_response({"items": items, "next": nxt}, headers={"ETag": tag})

    upstream.handler = handler
    p = poller(channel(upstream.url), session)
    first = await collect(p)
    assert "If-None-Match" not in upstream.seen[0].headers
    # only the finished walk carries the first page's ETag: a walk cut short re-fetches
    assert first[0].state["etag"] is None
    assert first[-1].state["etag"] == '"v1"' and first[-1].state["etagUrl"] == upstream.url
    upstream.seen.clear()
    second = await collect(p, first[-1].state)
    assert len(second) == 1 and second[0].not_modified and second[0].records == []
    assert second[0].state == first[-1].state
    assert upstream.seen[0].headers["If-None-Match"] == '"v1"' and len(upstream.seen) == 1
    assert p.stats["notModifiedTotal"] == 1


async def test_429_waits_at_least_retry_after_seconds_and_http_date(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    answers = [
        web.Response(status=429, headers={"Retry-After": "7"}),
        web.Response(
            status=429,
            headers={"Retry-After": format_datetime(NOW + timedelta(seconds=20), usegmt=True)},
        ),
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        return answers.pop(0) if answers else web.json_response({"items": [item("A")]})

    upstream.handler = handler
    sleeps = Sleeps()
    p = poller(channel(upstream.url), session, sleep=sleeps, rng=lambda: 1.0)
    pages = await collect(p)
    assert pages[0].records[0]["sku"] == "A"
    assert len(sleeps.delays) == 2
    assert sleeps.delays[0] >= 7.0 and sleeps.delays[1] >= 20.0
    assert p.stats["retriesTotal"] == 2 and p.stats["requestsTotal"] == 3


async def test_500s_then_success_with_backoff(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    failures = [500, 502]

    async def handler(request: web.Request) -> web.StreamResponse:
        if failures:
            return web.Response(status=failures.pop(0), text="upstream down")
        return web.json_response({"items": [item("A")]})

    upstream.handler = handler
    sleeps = Sleeps()
    p = poller(channel(upstream.url), session, sleep=sleeps, rng=lambda: 1.0, backoff_base=0.5)
    pages = await collect(p)
    assert len(pages[0].records) == 1
    assert sleeps.delays == [0.5, 1.0]  # full jitter ceiling base * 2**(attempt-1), rng = 1
    assert p.stats["retriesTotal"] == 2 and "HTTP 502" in p.stats["lastError"]


async def test_gives_up_after_max_attempts_naming_channel_url_status(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503)

    upstream.handler = handler
    sleeps = Sleeps()
    p = poller(
        channel(f"{upstream.url}/stock?api_key=qwerty123", maxAttempts=3), session, sleep=sleeps
    )
    with pytest.raises(RestChannelError) as info:
        await collect(p)
    err = info.value
    assert err.status == 503 and err.attempts == 3 and err.channel == "MKT"
    assert len(upstream.seen) == 3 and len(sleeps.delays) == 2
    message = str(err)
    assert "MKT" in message and "3 attempts" in message and "HTTP 503" in message
    assert "/stock?api_key=***" in message and "qwerty123" not in message + repr(err)


async def test_other_4xx_fails_at_once(upstream: Upstream, session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="no such feed")

    upstream.handler = handler
    sleeps = Sleeps()
    with pytest.raises(RestChannelError, match="HTTP 404 no such feed") as info:
        await collect(poller(channel(upstream.url), session, sleep=sleeps))
    assert info.value.status == 404 and len(upstream.seen) == 1 and sleeps.delays == []


async def test_redirects_are_not_followed(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "http://elsewhere.example/x"})

    upstream.handler = handler
    with pytest.raises(RestChannelError, match="redirect to http://elsewhere.example/x"):
        await collect(poller(channel(upstream.url), session))
    assert len(upstream.seen) == 1


async def test_slow_page_beyond_the_timeout_is_retried(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if len(upstream.seen) == 1:
            await upstream.release.wait()  # hangs until the test ends
        return web.json_response({"items": [item("A")]})

    upstream.handler = handler
    sleeps = Sleeps()
    p = poller(channel(upstream.url, timeoutSeconds=0.3), session, sleep=sleeps)
    started = time.monotonic()
    pages = await asyncio.wait_for(collect(p), 10)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3.0  # the channel's 0.3 s timeout, not a default one
    assert pages[0].records[0]["sku"] == "A"
    assert len(upstream.seen) == 2 and len(sleeps.delays) == 1
    assert p.stats["retriesTotal"] == 1 and "timed out after 0.3s" in p.stats["lastError"]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{not json", "page 1 is not valid JSON"),
        (b'{"items": {"a": {"sku": "A"}}}', r"page 1: recordsPath \$\.items\[\*\] finds no list"),
        (b'{"rows": []}', "finds no list"),
    ],
)
async def test_bad_json_or_no_list_is_not_retried(
    upstream: Upstream, session: aiohttp.ClientSession, body: bytes, match: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    upstream.handler = handler
    sleeps = Sleeps()
    with pytest.raises(RestChannelError, match=match) as info:
        await collect(poller(channel(upstream.url), session, sleep=sleeps))
    assert "channel MKT" in str(info.value)
    assert len(upstream.seen) == 1 and sleeps.delays == []


async def test_auth_header_reaches_upstream_but_never_logs_errors_or_reprs(
    upstream: Upstream,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MKT_TOKEN", TOKEN)
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        echo = f"bad token {request.headers.get('X-Api-Key')}"
        if calls == 1:
            return web.Response(status=500, text=echo)
        if calls == 2:
            return web.json_response({"items": [item("A")], "next": "c2"})
        return web.Response(status=401, text=echo)

    upstream.handler = handler
    caplog.set_level(logging.DEBUG)
    p = poller(channel(upstream.url, authHeader="X-Api-Key", authEnv="MKT_TOKEN"), session)
    pages: list[RestPage] = []
    with pytest.raises(RestChannelError) as info:
        async for page in p.poll({}):
            pages.append(page)
    assert [r.headers["X-Api-Key"] for r in upstream.seen] == [TOKEN] * 3
    assert len(pages) == 1 and info.value.status == 401
    secret_free = [
        caplog.text,
        str(info.value),
        repr(info.value),
        repr(p),
        orjson.dumps(p.stats).decode(),
        repr(pages[0]),
        repr(p.channel),
    ]
    assert "bad token ***" in str(info.value) and "bad token ***" in caplog.text
    for text in secret_free:
        assert TOKEN not in text and "s3cr3t-t0ken-XYZ" not in text


async def test_injected_limiter_paces_every_request(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.handler = cursor_pages(
        {
            None: ([item("A")], "2"),
            "2": ([item("B")], "3"),
            "3": ([item("C")], "4"),
            "4": ([item("D")], None),
        }
    )
    limiter = CountingLimiter(1, 0.2)  # one request per 0.2 s
    started = time.monotonic()
    pages = await asyncio.wait_for(
        collect(poller(channel(upstream.url), session, limiter=limiter)), 10
    )
    elapsed = time.monotonic() - started
    assert len(pages) == 4 and limiter.acquired == 4
    assert elapsed >= 0.55  # three waits of 0.2 s after the first request


async def test_default_limiter_follows_requests_per_minute_and_covers_retries(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    failures = [500]

    async def handler(request: web.Request) -> web.StreamResponse:
        if failures:
            return web.Response(status=failures.pop(0))
        return web.json_response({"items": [item("A")], "next": None})

    upstream.handler = handler
    ch = channel(upstream.url, requestsPerMinute=300)  # one request per 0.2 s
    p = RestPoller(ch, session=session, sleep=Sleeps(), now=lambda: NOW)
    started = time.monotonic()
    for _ in range(2):
        await asyncio.wait_for(collect(p), 10)
    elapsed = time.monotonic() - started
    assert len(upstream.seen) == 3  # a retry, then a second poll: three requests
    assert elapsed >= 0.35  # two waits of 0.2 s


async def test_a_rejected_record_keeps_its_neighbours(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    huge = item("H", qty=-1, blob="x" * 20_000)
    items = [item("A"), item("B", qty="lots"), item("C", ts=None), "not an object", huge]
    upstream.handler = cursor_pages({None: (items, None)})
    pages = await collect(poller(channel(upstream.url), session))
    page = pages[0]
    assert [r["sku"] for r in page.records] == ["A", "C"]
    assert page.records[1]["updatedAt"] == "2026-03-01T12:00:00Z"  # the fetch time
    assert [(r["page"], r["index"]) for r in page.rejected] == [(1, 1), (1, 3), (1, 4)]
    assert page.rejected[0]["record"] == item("B", qty="lots")
    assert any("onHand" in reason for reason in page.rejected[0]["reasons"])
    assert page.rejected[1]["reasons"] == ["record is not a JSON object"]
    assert isinstance(page.rejected[2]["record"], str) and "truncated" in page.rejected[2]["record"]
    assert len(page.rejected[2]["record"]) < 5000


async def test_event_id_column_is_used_when_mapped(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.handler = cursor_pages({None: ([item("A", id="evt-1"), item("B", id="")], None)})
    ch = channel(
        upstream.url,
        mapping={
            "fields": {
                "sku": "sku",
                "location": "store",
                "onHand": "qty",
                "updatedAt": "ts",
                "eventId": "id",
            }
        },
    )
    pages = await collect(poller(ch, session))
    assert [r["eventId"] for r in pages[0].records] == [
        "evt-1",
        "MKT:B|S1:2026-03-01T10:00:00Z",
    ]
