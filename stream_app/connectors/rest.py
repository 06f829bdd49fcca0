"""The REST side of a channel: one :meth:`RestPoller.poll` walks the upstream's pages and
yields each as a :class:`RestPage` (mapped records, rejected items, the state to persist).

* **Pages**: from the channel's ``url`` (or, with ``resumeFromCursor``, from
  ``state["cursor"]``), following ``nextCursorPath`` (``?<cursorParam>=<cursor>`` added to
  the url, its other query parameters kept) or ``nextUrlPath`` (absolute or relative; in
  that mode the cursor *is* the url). The walk stops at a page without a next, an empty
  page, a next already fetched in this poll (a loop), or after ``maxPages`` pages.
* **State** (``RestPage.state``, to persist only once the page's records are published):
  ``cursor`` where the next poll starts (the next page's cursor; at the end of an
  incremental feed the last page's own cursor, so it is fetched again), ``page``, and
  ``etag``/``etagUrl``: the ETag of the page the next poll starts from, set only on the
  last page of a finished walk (a walk cut short must not be answered 304 next time).
  On the first request ``If-None-Match`` is sent when ``etagUrl`` is that request's url; a
  304 yields one page with ``not_modified=True``, no records and the state unchanged.
* **Records** go through :func:`~stream_app.connectors.mapping.map_row`; an item without
  an ``eventId`` column gets ``<channel>:<sku>|<location>:<updatedAt>`` (a hash when too
  long), so the same record polled again is the same event. A page without a timestamp
  column is stamped with its fetch time (the injected ``now``).
* **Requests**: each one (retries too) first takes the limiter (default: one request per
  ``60 / requestsPerMinute`` s, so no 60 s window sees more than the rate plus one), has a
  ``timeoutSeconds`` total timeout and does not follow redirects (the auth header must not
  follow one elsewhere; a 3xx is an error naming where it points). A next url on another
  origin is refused for the same reason. 429, 5xx, timeouts and connection errors are
  retried with full-jitter backoff, never sooner than ``Retry-After`` (seconds or an HTTP
  date; one longer than ``max_retry_after`` gives up at once), up to ``maxAttempts``; other
  4xx fail at once. Bad JSON, or a ``recordsPath`` that finds no list, is not retried (the
  same bytes would come again): :class:`RestChannelError` names the channel and the page,
  and the next poll tries again. Every failure is a :class:`RestChannelError`.
* **Secrets**: the auth header value is sent, never logged; error texts (upstream bodies,
  exception messages) have it replaced by ``***`` and urls in them have query values
  masked (the cursor's excepted) and no user info.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiolimiter import AsyncLimiter
from jsonpath_ng import parse as parse_path
from jsonpath_ng.jsonpath import Child, Slice, Wildcard
from yarl import URL

from stream_app.connectors.config import RestChannel
from stream_app.connectors.mapping import map_row
from stream_app.fluent.retry import backoff_delay, parse_retry_after
from stream_app.records import MAX_TEXT, NO_LIMITS, Limits, parse_timestamp

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[object]]
#: a rejected item larger than this (as JSON) is kept as a truncated JSON text
PREVIEW_BYTES = 4096
SNIPPET_CHARS = 200


class RestChannelError(Exception):
    """A poll failed; the message names the channel, the url (no secrets), the status and
    the attempts. ``retry_after``: what the upstream asked for, if it did."""

    def __init__(
        self,
        message: str,
        *,
        channel: str,
        url: str,
        status: int | None = None,
        attempts: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.channel = channel
        self.url = url
        self.status = status
        self.attempts = attempts
        self.retry_after = retry_after


@dataclass(slots=True)
class RestPage:
    """One fetched page: ``records`` valid and mapped, ``rejected`` items with their place
    (``page``, ``index``) and ``reasons``; ``state`` to persist once they are published;
    ``last``: the walk ends here."""

    page: int
    records: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    state: dict[str, Any]
    not_modified: bool = False
    last: bool = False


def safe_url(url: URL | str, keep: str | None = None) -> str:
    """``url`` fit for a log line: no user info, every query value but ``keep``'s masked."""
    u = URL(url) if isinstance(url, str) else url
    u = u.with_user(None)
    if u.query:
        u = u.with_query([(k, v if k == keep else "***") for k, v in u.query.items()])
    return str(u)


def cursor_url(base: URL, param: str, cursor: str) -> URL:
    """``base`` with ``param=cursor`` set (its other query parameters kept)."""
    return base.update_query({param: cursor})


def derived_event_id(channel: str, record: Mapping[str, Any]) -> str:
    """``<channel>:<sku>|<location>:<updatedAt as ISO>``; a sha256 form when over length."""
    stamp = parse_timestamp(record["updatedAt"])[0]
    text = f"{channel}:{record['sku']}|{record['location']}:{stamp}"
    if len(text) <= MAX_TEXT:
        return text
    return f"{channel}:sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def preview(item: Any) -> Any:
    """``item`` as it came, or the start of its JSON text when that is too long."""
    raw = orjson.dumps(item, default=str)
    if len(raw) <= PREVIEW_BYTES:
        return item
    head = raw[:PREVIEW_BYTES].decode("utf-8", errors="ignore")
    return f"{head}... (truncated, {len(raw)} bytes)"


def _list_parent(path: str) -> Any:
    """For ``...[*]`` the path of the list itself (it must find one), else None."""
    expr = parse_path(path)
    if isinstance(expr, Child) and (
        isinstance(expr.right, Wildcard)
        or (isinstance(expr.right, Slice) and expr.right.start is None and expr.right.end is None)
    ):
        return expr.left
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class RestPoller:
    """Polls one REST channel over a shared aiohttp session. ``stats``: progress for
    ``GET /channels`` (never secrets)."""

    def __init__(
        self,
        channel: RestChannel,
        *,
        session: aiohttp.ClientSession,
        limiter: AsyncLimiter | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        now: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
        limits: Limits = NO_LIMITS,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_retry_after: float = 300.0,
    ) -> None:
        self.channel = channel
        self._session = session
        rpm = channel.requests_per_minute
        self._limiter = limiter or AsyncLimiter(1, 60.0 / rpm)
        self._sleep = sleep
        self._rng = rng
        self._now = now
        self._limits = limits
        self._backoff = (backoff_base, backoff_cap)
        self._max_retry_after = max_retry_after
        self._base = URL(channel.url)
        self._auth = channel.auth_value()
        self._timeout = aiohttp.ClientTimeout(total=channel.timeout_seconds)
        self._records_path = parse_path(channel.records_path)
        self._records_list = _list_parent(channel.records_path)
        self._cursor_path = (
            parse_path(channel.next_cursor_path) if channel.next_cursor_path else None
        )
        self._url_path = parse_path(channel.next_url_path) if channel.next_url_path else None
        self._pending_id = f"pending-{uuid.uuid4().hex}"
        self._stats: dict[str, Any] = dict.fromkeys(
            ("requestsTotal", "retriesTotal", "pagesTotal", "recordsTotal", "rejectedTotal"), 0
        )
        self._stats |= {"notModifiedTotal": 0, "lastStatus": None, "lastError": None}
        self._stats |= {"lastErrorAt": None, "lastRequestAt": None, "lastBackoffSeconds": 0.0}

    def __repr__(self) -> str:
        return f"RestPoller(channel={self.channel.name!r}, url={self._safe(self._base)!r})"

    @property
    def stats(self) -> dict[str, Any]:
        """Requests, retries, pages, records, rejected, 304s; last status, error, request."""
        return dict(self._stats)

    # --- one poll --------------------------------------------------------------------
    async def poll(self, state: Mapping[str, Any]) -> AsyncIterator[RestPage]:
        """Walk the pages from the first one (or ``state["cursor"]``); see the module."""
        ch = self.channel
        cursor = state.get("cursor") if ch.resume_from_cursor else None
        url = self._url_for(cursor)
        etag = state.get("etag") if state.get("etagUrl") in (None, str(url)) else None
        first_url, first_etag = url, None
        seen: set[str] = set()
        for page in range(1, ch.max_pages + 1):
            seen.add(str(url))
            status, body, page_etag = await self._get(url, page, etag if page == 1 else None)
            if status == 304:
                self._stats["notModifiedTotal"] += 1
                yield RestPage(page, [], [], dict(state), not_modified=True, last=True)
                return
            fetched_at = _iso(self._now())
            doc = self._decode(body, status, url, page)
            items = self._items(doc, url, page)
            records, rejected = self._map(items, page, fetched_at)
            if page == 1:
                first_etag = page_etag
            next_cursor, next_url = self._next(doc, url, page)
            more = bool(items) and next_url is not None and str(next_url) not in seen
            if next_url is not None and str(next_url) in seen and items:
                log.warning("channel %s: page %d points back to a fetched page", ch.name, page)
            if next_cursor is None and ch.resume_from_cursor:
                next_cursor = cursor  # the end of the feed: fetch this page again next time
            new_state = {**state, "cursor": next_cursor, "page": page}
            new_state |= {"etag": None, "etagUrl": None}
            truncated = more and page == ch.max_pages
            if not more or truncated:
                start = self._url_for(next_cursor if ch.resume_from_cursor else None)
                if not truncated and start in (first_url, url):
                    new_state["etag"] = first_etag if start == first_url else page_etag
                    new_state["etagUrl"] = str(start) if new_state["etag"] else None
            if truncated:
                log.warning("channel %s: stopped after maxPages=%d", ch.name, ch.max_pages)
            self._stats["pagesTotal"] += 1
            self._stats["recordsTotal"] += len(records)
            self._stats["rejectedTotal"] += len(rejected)
            yield RestPage(page, records, rejected, new_state, last=not more or truncated)
            if not more or next_url is None:  # (more: there is a next_url)
                return
            url, cursor = next_url, next_cursor

    # --- pages -----------------------------------------------------------------------
    def _url_for(self, cursor: Any) -> URL:
        if cursor is None or cursor == "":
            return self._base
        if self._cursor_path is not None:
            return cursor_url(self._base, self.channel.cursor_param, str(cursor))
        if self._url_path is not None:
            return self._same_origin(URL(str(cursor)), str(cursor))
        return self._base

    def _same_origin(self, url: URL, given: str) -> URL:
        if not url.is_absolute() or url.origin() != self._base.origin():
            raise self._error(
                f"next url {safe_url(given)} is not on {self._base.origin()} "
                "(the auth header is only sent to the channel's own origin)",
                url,
            )
        return url

    def _decode(self, body: bytes, status: int, url: URL, page: int) -> Any:
        if status == 204:
            return []
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise self._error(f"page {page} is not valid JSON ({exc}); not retried", url) from None

    def _items(self, doc: Any, url: URL, page: int) -> list[Any]:
        path = self.channel.records_path
        if self._records_list is not None:
            lists = [m.value for m in self._records_list.find(doc)]
            if not lists or not all(isinstance(v, list) for v in lists):
                raise self._error(f"page {page}: recordsPath {path} finds no list", url)
            return [m.value for m in self._records_path.find(doc)]
        found = [m.value for m in self._records_path.find(doc)]
        if len(found) != 1 or not isinstance(found[0], list):
            raise self._error(f"page {page}: recordsPath {path} finds no list", url)
        return list(found[0])

    def _next(self, doc: Any, url: URL, page: int) -> tuple[str | None, URL | None]:
        expr = self._cursor_path or self._url_path
        if expr is None:
            return None, None
        found = [m.value for m in expr.find(doc) if m.value not in (None, "")]
        if not found:
            return None, None
        value = found[0]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self._error(f"page {page}: the next cursor/url is not a string", url)
        if self._cursor_path is not None:
            return str(value), cursor_url(self._base, self.channel.cursor_param, str(value))
        nxt = self._same_origin(url.join(URL(str(value))), str(value))
        return str(nxt), nxt

    def _map(
        self, items: list[Any], page: int, fetched_at: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        ch = self.channel
        records: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            record, reasons = (
                map_row(
                    item,
                    ch.mapping,
                    channel=ch.name,
                    event_id=self._pending_id,
                    default_updated_at=fetched_at,
                    limits=self._limits,
                )
                if isinstance(item, dict)
                else (None, ["record is not a JSON object"])
            )
            if record is None:
                rejected.append({"page": page, "index": index, "reasons": reasons})
                rejected[-1]["record"] = preview(item)
                continue
            if record["eventId"] == self._pending_id:  # no eventId column (or it was empty)
                record["eventId"] = derived_event_id(ch.name, record)  # updatedAt checked
            records.append(record)
        return records, rejected

    # --- HTTP ------------------------------------------------------------------------
    async def _get(self, url: URL, page: int, etag: str | None) -> tuple[int, bytes, str | None]:
        """(status, body, ETag) of a 2xx or 304, after retries; else RestChannelError."""
        ch = self.channel
        headers = {"Accept": "application/json"}
        if self._auth is not None and self._auth.get_secret_value():
            headers[ch.auth_header] = self._auth.get_secret_value()
        if etag:
            headers["If-None-Match"] = str(etag)
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            retry_after: float | None = None
            await self._limiter.acquire()
            self._stats["requestsTotal"] += 1
            self._stats["lastRequestAt"] = _iso(self._now())
            try:
                async with self._session.get(
                    url,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                    raise_for_status=False,
                ) as resp:
                    status = resp.status
                    self._stats["lastStatus"] = status
                    if 200 <= status < 300 or status == 304:
                        body = await resp.read() if status != 304 else b""
                        return status, body, resp.headers.get("ETag")
                    snippet = (await resp.content.read(SNIPPET_CHARS * 4)).decode(
                        "utf-8", errors="replace"
                    )[:SNIPPET_CHARS]
                    error = f"HTTP {status} {' '.join(snippet.split())}".strip()
                    if 300 <= status < 400:
                        where = safe_url(resp.headers.get("Location", "?"))
                        error = f"HTTP {status} redirect to {where} (not followed; set the url)"
                    if status != 429 and status < 500:
                        raise self._error(f"page {page}: {error}", url, status, attempt)
                    retry_after = parse_retry_after(
                        resp.headers.get("Retry-After"), now=self._now()
                    )
            except (TimeoutError, aiohttp.ClientError) as exc:
                self._stats["lastStatus"] = status
                error = (
                    f"timed out after {ch.timeout_seconds:g}s"
                    if isinstance(exc, TimeoutError) and not str(exc)
                    else f"{type(exc).__name__}: {exc}"
                )
            error = self._redact(error)
            failure = (url, status, attempt, retry_after)
            if attempt >= ch.max_attempts:
                raise self._error(
                    f"page {page}: gave up after {attempt} attempts: {error}", *failure
                )
            if retry_after is not None and retry_after > self._max_retry_after:
                why = f"Retry-After {retry_after:.0f}s > {self._max_retry_after:.0f}s, not waiting"
                raise self._error(f"page {page}: {error}; {why}", *failure)
            base, cap = self._backoff
            delay = backoff_delay(
                attempt, base=base, cap=cap, rng=self._rng, retry_after=retry_after
            )
            self._stats["retriesTotal"] += 1
            self._stats["lastBackoffSeconds"] = delay
            note = f"GET {self._safe(url)} page {page} failed ({error})"
            self._note(note)
            log.warning(
                "channel %s: %s; retry %d/%d in %.2fs",
                ch.name,
                note,
                attempt,
                ch.max_attempts - 1,
                delay,
            )
            await self._sleep(delay)

    # --- errors and secrets ----------------------------------------------------------
    def _safe(self, url: URL) -> str:
        return safe_url(url, keep=self.channel.cursor_param if self._cursor_path else None)

    def _redact(self, text: str) -> str:
        secret = self._auth.get_secret_value() if self._auth is not None else ""
        if len(secret) >= 4:
            text = text.replace(secret, "***")
            _, _, token = secret.partition(" ")
            if token and len(token) >= 4:  # "Bearer <token>": the token alone too
                text = text.replace(token, "***")
        return text

    def _note(self, error: str) -> None:
        self._stats["lastError"] = error[:500]
        self._stats["lastErrorAt"] = _iso(self._now())

    def _error(
        self,
        what: str,
        url: URL,
        status: int | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> RestChannelError:
        message = self._redact(f"channel {self.channel.name}: GET {self._safe(url)} {what}")
        self._note(message)
        return RestChannelError(
            message,
            channel=self.channel.name,
            url=self._safe(url),
            status=status,
            attempts=attempts,
            retry_after=retry_after,
        )
