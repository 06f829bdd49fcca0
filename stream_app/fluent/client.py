"""Async client for the Fluent Commerce APIs the inventory sync and the release use.

Owns the OAuth token (password grant, refresh grant, one re-authentication on 401 and never
a loop), retries (timing in :mod:`~stream_app.fluent.retry`) that honour ``Retry-After``, the
one-job-per-UTC-day rule, inventory batches (:mod:`~stream_app.fluent.batches`) and their
polling, and the two GraphQL calls (``createOrder`` and ``inventoryPositions``, documents in
:mod:`~stream_app.fluent.documents`). Secrets (password, client secret, tokens) never appear
in logs, exception messages or reprs. Errors are in :mod:`~stream_app.fluent.errors`; every
public name of those modules is re-exported here. Over 500 lines on purpose: one class
whose calls share one session, one token and one retry loop (the pure parts live beside it).
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import SecretStr

from stream_app.fluent.batches import (
    COMPLETE,
    FAILED,
    MAX_BATCH_RECORDS,
    BatchOutcome,
    InventoryRecord,
    SubmittedBatch,
    batch_outcome,
    inventory_entities,
)
from stream_app.fluent.documents import (
    CREATE_ORDER_MUTATION,
    create_orders_mutation,
    inventory_positions_query,
)
from stream_app.fluent.errors import (
    FluentAuthError,
    FluentError,
    FluentGraphQLError,
    FluentJobClosed,
    FluentRequestError,
    FluentUnavailable,
    error_messages,
    graphql_messages,
)
from stream_app.fluent.retry import RetryEvent, backoff_delay, parse_retry_after

if TYPE_CHECKING:
    from stream_app.settings import Settings

__all__ = [
    "MAX_BATCH_RECORDS",
    "BatchOutcome",
    "FluentAuthError",
    "FluentClient",
    "FluentConfig",
    "FluentError",
    "FluentGraphQLError",
    "FluentJobClosed",
    "FluentRequestError",
    "FluentUnavailable",
    "InventoryRecord",
    "RetryEvent",
    "SubmittedBatch",
    "backoff_delay",
    "batch_outcome",
    "inventory_entities",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v4.1"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a credential
GRAPHQL_PATH = "/graphql"
_MAX_POLL_DELAY = 5.0

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class FluentConfig:
    base_url: str
    username: str
    password: SecretStr
    client_id: str
    client_secret: SecretStr
    retailer_id: str
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    timeout_seconds: float = 10.0
    poll_interval: float = 0.2
    poll_timeout: float = 120.0
    token_refresh_margin: float = 60.0
    job_name_prefix: str = "stream-app-inventory"
    account: str = ""
    """Sent as the ``fluent.account`` header when set (newer Fluent docs list it)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not self.base_url:
            raise ValueError("base_url is required")

    @classmethod
    def from_settings(cls, settings: Settings) -> FluentConfig:
        return cls(
            base_url=settings.fluent_url,
            username=settings.fluent_username,
            password=settings.fluent_password,
            client_id=settings.fluent_client_id,
            client_secret=settings.fluent_client_secret,
            retailer_id=settings.retailer_id,
            max_attempts=settings.fluent_max_attempts,
            backoff_base=settings.fluent_backoff_base,
            backoff_max=settings.fluent_backoff_max,
            timeout_seconds=settings.fluent_timeout_seconds,
            poll_interval=settings.fluent_poll_interval,
            poll_timeout=settings.fluent_poll_timeout,
            job_name_prefix=f"{settings.app_id}-inventory",
        )


@dataclass(slots=True)
class _Response:
    status: int
    body: Any
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def messages(self) -> list[str]:
        return error_messages(self.body, self.text)


# --- the client -----------------------------------------------------------------------------


class FluentClient:
    """One Fluent account over one aiohttp session; use as ``async with FluentClient(cfg)``.

    Status-page attributes: ``retries_total``, ``last_error`` (no secrets),
    ``last_backoff_seconds``, ``token_requests_total``; ``on_retry`` is called before each
    backoff wait. ``sleep``, ``rng`` and ``clock`` (monotonic seconds) are injectable.
    """

    def __init__(
        self,
        config: FluentConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        on_retry: Callable[[RetryEvent], None] | None = None,
        on_call: Callable[[str, str, str, float], None] | None = None,
    ) -> None:
        self.config = config
        #: (method, path, status or error kind, seconds) of every HTTP call (metrics)
        self.on_call = on_call
        self._base = config.base_url.rstrip("/")
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self.on_retry = on_retry
        self._session: aiohttp.ClientSession | None = None
        self._token: SecretStr | None = None
        self._token_generation = 0
        self._token_refresh_at = 0.0
        self._token_expires_at = 0.0
        self._refresh_token: SecretStr | None = None
        self._issued: list[SecretStr] = []
        self._token_lock = asyncio.Lock()
        self._job_lock = asyncio.Lock()
        self._jobs: dict[tuple[date, bool], str] = {}
        self.retries_total = 0
        self.token_requests_total = 0
        self.last_error: str | None = None
        self.last_backoff_seconds = 0.0

    def _note_call(self, method: str, path: str, status: str, started: float) -> None:
        if self.on_call is not None:
            self.on_call(method, path, status, self._clock() - started)

    def __repr__(self) -> str:
        return f"FluentClient(base_url={self._base!r}, retailer_id={self.config.retailer_id!r})"

    # --- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> FluentClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(raise_for_status=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def jobs(self) -> dict[str, str]:
        """Cached job ids, e.g. ``{"2026-11-22/delta": "17"}`` (for a status page)."""
        return {
            f"{day.isoformat()}/{'full' if full else 'delta'}": job_id
            for (day, full), job_id in self._jobs.items()
        }

    def stats(self) -> dict[str, Any]:
        """Counters for a status page; never contains secrets."""
        return {
            "retriesTotal": self.retries_total,
            "tokenRequestsTotal": self.token_requests_total,
            "lastError": self.last_error,
            "lastBackoffSeconds": self.last_backoff_seconds,
            "tokenValid": self._token is not None and self._clock() < self._token_expires_at,
            "jobs": self.jobs,
        }

    # --- secrets hygiene ----------------------------------------------------------------
    def _redact(self, text: str) -> str:
        secrets = [self.config.password, self.config.client_secret, *self._issued]
        for secret in secrets:
            value = secret.get_secret_value()
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def _remember(self, secret: str) -> SecretStr:
        wrapped = SecretStr(secret)
        self._issued = [*self._issued[-15:], wrapped]
        return wrapped

    # --- HTTP with retries --------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> _Response:
        """One logical call: retries 429/5xx/timeouts/connection errors with backoff,
        re-authenticates once on 401. Returns any other response to the caller."""
        await self.start()
        assert self._session is not None
        url = self._base + path
        data: Any = None
        headers = {"Accept": "application/json"}
        if self.config.account:
            headers["fluent.account"] = self.config.account
        if json_body is not None:
            data = orjson.dumps(json_body)
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = dict(form)
        generation_at_start = self._token_generation
        attempt = 0
        while True:
            attempt += 1
            used_token: SecretStr | None = None
            used_generation = 0
            if auth:
                used_token, used_generation = await self._access_token()
                headers["Authorization"] = f"Bearer {used_token.get_secret_value()}"
            status: int | None = None
            retry_after: float | None = None
            started = self._clock()
            try:
                # Big bodies go as a stream (aiohttp warns about >1 MB of raw bytes).
                payload = (
                    io.BytesIO(data) if isinstance(data, bytes) and len(data) > 2**20 else data
                )
                async with self._session.request(
                    method,
                    url,
                    data=payload,
                    params=params,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                self._note_call(method, path, str(status), started)
                text = raw.decode("utf-8", errors="replace")
                try:
                    body = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    body = None
                response = _Response(status, body, text)
                if status == 401 and auth:
                    if used_generation > generation_at_start:
                        # This call already got a fresh token and it was refused: another
                        # re-authentication would only loop.
                        self.last_error = f"{method} {path}: HTTP 401 with a fresh token"
                        raise FluentAuthError(
                            f"Fluent rejected a freshly issued token on {method} {path} (HTTP 401)"
                        )
                    self._drop_token(used_token)
                    attempt -= 1  # re-authentication is not a retry
                    continue
                if status != 429 and status < 500:
                    return response
                error = f"HTTP {status} {'; '.join(response.messages())[:200]}".strip()
            except (TimeoutError, aiohttp.ClientError) as exc:
                self._note_call(method, path, type(exc).__name__, started)
                error = f"{type(exc).__name__} {exc}".strip()
            error = self._redact(f"{method} {path}: {error}")
            self.last_error = error
            if attempt >= self.config.max_attempts:
                log.warning("Fluent call gave up after %d attempts: %s", attempt, error)
                raise FluentUnavailable(
                    f"Fluent unavailable after {attempt} attempts: {error}", status=status
                )
            delay = backoff_delay(
                attempt,
                base=self.config.backoff_base,
                cap=self.config.backoff_max,
                rng=self._rng,
                retry_after=retry_after,
            )
            self.retries_total += 1
            self.last_backoff_seconds = delay
            log.warning(
                "Fluent call failed (%s); retry %d/%d in %.2fs",
                error,
                attempt,
                self.config.max_attempts - 1,
                delay,
            )
            if self.on_retry is not None:
                try:
                    self.on_retry(RetryEvent(method, path, attempt, status, error, delay))
                except Exception:  # a status-page hook must never break the call
                    log.exception("Fluent on_retry callback failed")
            await self._sleep(delay)

    # --- tokens ---------------------------------------------------------------------------
    def _drop_token(self, token: SecretStr | None) -> None:
        if token is not None and self._token is not None:
            if token.get_secret_value() == self._token.get_secret_value():
                self._token = None

    async def _access_token(self) -> tuple[SecretStr, int]:
        """The current token and its generation (it grows with every token issued)."""
        async with self._token_lock:
            token = await self._current_token()
            return token, self._token_generation

    async def _current_token(self) -> SecretStr:
        """Called under the token lock: reuse, refresh, or re-authenticate."""
        now = self._clock()
        token = self._token
        if token is not None and now < self._token_refresh_at:
            return token
        still_valid = token is not None and now < self._token_expires_at
        if self._refresh_token is not None:
            refresh, self._refresh_token = self._refresh_token, None  # single use
            try:
                return await self._grant(
                    "refresh_token",
                    {
                        "grant_type": "refresh_token",
                        "refresh_token": refresh.get_secret_value(),
                        "client_id": self.config.client_id,
                        "client_secret": self.config.client_secret.get_secret_value(),
                    },
                )
            except FluentAuthError:
                log.info("Fluent refused the refresh token; authenticating with password")
            except FluentUnavailable:
                if still_valid and token is not None:
                    return token  # refresh ahead of expiry failed; the old token still works
                raise
        try:
            return await self._grant(
                "password",
                {
                    "grant_type": "password",
                    "username": self.config.username,
                    "password": self.config.password.get_secret_value(),
                    "client_id": self.config.client_id,
                    "client_secret": self.config.client_secret.get_secret_value(),
                    "scope": "api",
                },
            )
        except FluentUnavailable:
            if still_valid and token is not None:
                return token
            raise

    async def _grant(self, grant: str, form: Mapping[str, str]) -> SecretStr:
        self.token_requests_total += 1
        resp = await self._call("POST", TOKEN_PATH, form=form, auth=False)
        body = resp.body if isinstance(resp.body, Mapping) else {}
        if not resp.ok or not isinstance(body.get("access_token"), str):
            detail = self._redact("; ".join(resp.messages()) or f"HTTP {resp.status}")
            self.last_error = f"POST {TOKEN_PATH}: {grant} grant refused ({detail})"
            raise FluentAuthError(
                f"Fluent refused the {grant} grant (HTTP {resp.status}: {detail})"
            )
        token = self._remember(body["access_token"])
        try:
            ttl = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            ttl = 3600.0
        now = self._clock()
        margin = min(self.config.token_refresh_margin, ttl * 0.1)
        self._token = token
        self._token_generation += 1
        self._token_expires_at = now + ttl
        self._token_refresh_at = now + ttl - margin
        refresh = body.get("refresh_token")
        self._refresh_token = self._remember(refresh) if isinstance(refresh, str) else None
        log.debug("Fluent %s grant ok; token valid for %.0fs", grant, ttl)
        return token

    # --- generic response handling ------------------------------------------------------
    def _raise_for(self, resp: _Response, what: str) -> None:
        if resp.ok:
            return
        messages = [self._redact(m) for m in resp.messages()]
        detail = "; ".join(messages)[:500]
        self.last_error = f"{what}: HTTP {resp.status} {detail}".strip()
        raise FluentRequestError(
            f"Fluent refused {what} (HTTP {resp.status}: {detail})",
            status=resp.status,
            messages=messages,
        )

    # --- jobs -----------------------------------------------------------------------------
    def job_name(self, day: date, *, preprocessing: bool) -> str:
        mode = "full" if preprocessing else "delta"
        return f"{self.config.job_name_prefix}-{mode}-{day.isoformat()}"

    def forget_job(self, day: date, *, preprocessing: bool) -> None:
        self._jobs.pop((day, preprocessing), None)

    async def ensure_job(self, day: date, *, preprocessing: bool) -> str:
        """The OPEN job for ``day`` (UTC) and mode: cached, else found by name, else created.

        Reuse across restarts and workers works through the name; when several OPEN jobs
        carry it (two workers raced), the oldest wins so everybody converges on it.
        """
        key = (day, preprocessing)
        cached = self._jobs.get(key)
        if cached is not None:
            return cached
        async with self._job_lock:
            cached = self._jobs.get(key)
            if cached is not None:
                return cached
            name = self.job_name(day, preprocessing=preprocessing)
            job_id = await self._find_open_job(name)
            if job_id is None:
                job_id = await self._create_job(name, preprocessing=preprocessing)
                log.info("Fluent job %s created (%s)", job_id, name)
            else:
                log.info("Fluent job %s reused (%s)", job_id, name)
            self._jobs = {k: v for k, v in self._jobs.items() if k[0] >= day}
            self._jobs[key] = job_id
            return job_id

    async def _find_open_job(self, name: str) -> str | None:
        resp = await self._call(
            "GET",
            f"{API_PREFIX}/job",
            params={
                "name": name,
                "status": "OPEN",
                "retailerId": self.config.retailer_id,
                "count": "100",
            },
        )
        self._raise_for(resp, "the job search")
        body = resp.body
        items = body.get("results", []) if isinstance(body, Mapping) else body
        candidates: list[str] = []
        for job in items if isinstance(items, list) else []:
            if not isinstance(job, Mapping):
                continue
            job_id = job.get("jobId", job.get("id"))
            if job_id is None or job.get("name") != name:
                continue
            if str(job.get("status", "")).upper() != "OPEN":
                continue
            retailer = job.get("retailerId")
            if retailer is not None and str(retailer) != self.config.retailer_id:
                continue
            candidates.append(str(job_id))
        if not candidates:
            return None
        return min(candidates, key=lambda i: (0, int(i), i) if i.isdigit() else (1, 0, i))

    async def _create_job(self, name: str, *, preprocessing: bool) -> str:
        body: dict[str, Any] = {"name": name, "retailerId": self.config.retailer_id}
        if not preprocessing:
            body["meta"] = {"preprocessing": "skip"}
        resp = await self._call("POST", f"{API_PREFIX}/job", json_body=body)
        self._raise_for(resp, "job creation")
        job_id = resp.body.get("id") if isinstance(resp.body, Mapping) else None
        if job_id is None:
            raise FluentRequestError("Fluent created a job without an id", status=resp.status)
        return str(job_id)

    # --- batches --------------------------------------------------------------------------
    async def send_batch(
        self, job_id: str, records: Sequence[InventoryRecord], *, source: str | None = None
    ) -> str:
        """POST one UPSERT/INVENTORY batch; returns its id.

        Raises ValueError for no records or more than 5000 (before any call) and
        :class:`FluentJobClosed` when Fluent says the job is closed or gone.
        """
        if not records:
            raise ValueError("a batch needs at least one record")
        if len(records) > MAX_BATCH_RECORDS:
            raise ValueError(
                f"a batch holds at most {MAX_BATCH_RECORDS} records, got {len(records)}"
            )
        body: dict[str, Any] = {
            "action": "UPSERT",
            "entityType": "INVENTORY",
            "entities": inventory_entities(records, self.config.retailer_id),
        }
        if source:
            body["source"] = source
        path = f"{API_PREFIX}/job/{quote(job_id, safe='')}/batch"
        resp = await self._call("POST", path, json_body=body)
        if resp.status == 404 or (
            resp.status == 400 and any("closed" in m.lower() for m in resp.messages())
        ):
            messages = resp.messages()
            self.last_error = f"POST {path}: job {job_id} closed ({'; '.join(messages)[:200]})"
            raise FluentJobClosed(
                f"Fluent job {job_id} takes no more batches (HTTP {resp.status})",
                status=resp.status,
                messages=messages,
            )
        self._raise_for(resp, f"batch for job {job_id}")
        batch_id = resp.body.get("id") if isinstance(resp.body, Mapping) else None
        if batch_id is None:
            raise FluentRequestError("Fluent accepted a batch without an id", status=resp.status)
        return str(batch_id)

    async def submit_batch(
        self,
        records: Sequence[InventoryRecord],
        *,
        day: date,
        preprocessing: bool,
        source: str | None = None,
    ) -> SubmittedBatch:
        """:meth:`ensure_job` + :meth:`send_batch`; a closed job is replaced once."""
        job_id = await self.ensure_job(day, preprocessing=preprocessing)
        try:
            return SubmittedBatch(job_id, await self.send_batch(job_id, records, source=source))
        except FluentJobClosed:
            log.info("Fluent job %s is closed; creating a new one", job_id)
            if self._jobs.get((day, preprocessing)) == job_id:
                self.forget_job(day, preprocessing=preprocessing)
            job_id = await self.ensure_job(day, preprocessing=preprocessing)
            return SubmittedBatch(job_id, await self.send_batch(job_id, records, source=source))

    async def batch_status(self, job_id: str, batch_id: str) -> dict[str, Any]:
        path = f"{API_PREFIX}/job/{quote(job_id, safe='')}/batch/{quote(batch_id, safe='')}"
        resp = await self._call("GET", path)
        self._raise_for(resp, f"batch {batch_id} status")
        return resp.body if isinstance(resp.body, dict) else {}

    async def wait_batch(
        self,
        job_id: str,
        batch_id: str,
        *,
        records: Sequence[InventoryRecord] | None = None,
    ) -> BatchOutcome:
        """Poll until COMPLETE (interval doubling up to 5 s) and apply the outcome rule.

        Pass the ``records`` that were sent so that records without a result entry are
        judged too (see :class:`BatchOutcome`). Raises :class:`FluentUnavailable` after
        ``poll_timeout``.
        """
        deadline = self._clock() + self.config.poll_timeout
        delay = self.config.poll_interval
        cap = max(self.config.poll_interval, _MAX_POLL_DELAY)
        while True:
            body = await self.batch_status(job_id, batch_id)
            status = str(body.get("status", "")).upper()
            if status in COMPLETE or status in FAILED:
                outcome = batch_outcome(job_id, batch_id, body, records)
                if outcome.failed:
                    log.info(
                        "Fluent batch %s: %d accepted, %d failed",
                        batch_id,
                        len(outcome.accepted),
                        len(outcome.failed),
                    )
                return outcome
            remaining = deadline - self._clock()
            if remaining <= 0:
                self.last_error = f"batch {batch_id} still {status or 'unknown'} after polling"
                raise FluentUnavailable(
                    f"Fluent batch {batch_id} not COMPLETE after {self.config.poll_timeout:g}s "
                    f"(status {status or 'unknown'})"
                )
            await self._sleep(min(delay, remaining))
            delay = min(delay * 2, cap)

    # --- GraphQL --------------------------------------------------------------------------
    async def graphql(self, query: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        """POST a GraphQL document; returns the whole body (``data`` and maybe ``errors``)."""
        resp = await self._call(
            "POST", GRAPHQL_PATH, json_body={"query": query, "variables": dict(variables)}
        )
        self._raise_for(resp, "the GraphQL request")
        if not isinstance(resp.body, dict):
            raise FluentGraphQLError("Fluent returned a GraphQL response that is not an object")
        return resp.body

    async def create_order(self, order_input: Mapping[str, Any]) -> tuple[str, bool]:
        """createOrder; returns ``(ref, created_now)``. An "already exists" error for the
        same ref counts as success (``created_now`` False): a retried create is harmless."""
        ref = order_input.get("ref")
        if not isinstance(ref, str) or not ref:
            raise ValueError("order_input needs a 'ref'")
        body = await self.graphql(CREATE_ORDER_MUTATION, {"input": dict(order_input)})
        messages = graphql_messages(body)
        if messages:
            if any("already exists" in m.lower() for m in messages):
                return ref, False
            self.last_error = self._redact(f"createOrder {ref}: {'; '.join(messages)}")[:500]
            raise FluentGraphQLError(
                f"createOrder {ref} failed: {'; '.join(messages)[:500]}", messages=messages
            )
        data = body.get("data")
        created = data.get("createOrder") if isinstance(data, Mapping) else None
        if not isinstance(created, Mapping):
            raise FluentGraphQLError(f"createOrder {ref} returned no order")
        return str(created.get("ref") or ref), True

    async def create_orders(
        self, order_inputs: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, bool | str]]:
        """Several createOrder mutations in ONE GraphQL request (aliases ``o0``, ``o1``…,
        executed in order, each with its own input variable), so a release of 100,000
        reservations costs thousands of HTTP round trips instead of 100,000.

        Returns, per input in order, ``(ref, True)`` created now, ``(ref, False)`` it
        already existed (success, as in :meth:`create_order`) or ``(ref, "<error>")``
        when that one failed. A failure of the whole request (HTTP, auth, an error
        without a ``path``) raises, as :meth:`create_order` does."""
        refs: list[str] = []
        for order_input in order_inputs:
            ref = order_input.get("ref")
            if not isinstance(ref, str) or not ref:
                raise ValueError("every order input needs a 'ref'")
            refs.append(ref)
        if not refs:
            return []
        variables = {f"i{n}": dict(order_input) for n, order_input in enumerate(order_inputs)}
        body = await self.graphql(create_orders_mutation(len(refs)), variables)
        data = body.get("data")
        data = data if isinstance(data, Mapping) else {}
        by_alias: dict[str, list[str]] = {}
        unplaced: list[str] = []
        for error in body.get("errors") or []:
            message = str(error.get("message", error)) if isinstance(error, Mapping) else str(error)
            path = error.get("path") if isinstance(error, Mapping) else None
            if isinstance(path, list) and path and isinstance(path[0], str):
                by_alias.setdefault(path[0], []).append(message)
            else:
                unplaced.append(message)
        if unplaced and not any(isinstance(data.get(f"o{n}"), Mapping) for n in range(len(refs))):
            self.last_error = self._redact(f"createOrder batch: {'; '.join(unplaced)}")[:500]
            raise FluentGraphQLError(
                f"createOrder batch failed: {'; '.join(unplaced)[:500]}", messages=unplaced
            )
        results: list[tuple[str, bool | str]] = []
        for n, ref in enumerate(refs):
            alias = f"o{n}"
            created = data.get(alias)
            messages = by_alias.get(alias, [])
            if isinstance(created, Mapping):
                results.append((str(created.get("ref") or ref), True))
            elif any("already exists" in m.lower() for m in messages):
                results.append((ref, False))
            else:
                error = "; ".join(messages or unplaced) or "no order returned"
                self.last_error = self._redact(f"createOrder {ref}: {error}")[:500]
                results.append((ref, f"createOrder {ref} failed: {error[:500]}"))
        return results

    async def inventory_positions(
        self,
        page_size: int = 500,
        *,
        product_refs: Sequence[str] | None = None,
        location_refs: Sequence[str] | None = None,
        catalogue_ref: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every inventory position (the ``node`` dicts), following cursor pagination."""
        nodes: list[dict[str, Any]] = []
        async for page in self.inventory_position_pages(
            page_size, product_refs=product_refs, location_refs=location_refs,
            catalogue_ref=catalogue_ref,
        ):
            nodes.extend(page)
        return nodes

    async def inventory_position_pages(
        self,
        page_size: int = 500,
        *,
        product_refs: Sequence[str] | None = None,
        location_refs: Sequence[str] | None = None,
        catalogue_ref: str | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The inventory positions page by page (memory: one page, whatever the catalogue)."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        query = inventory_positions_query(
            products=product_refs is not None,
            locations=location_refs is not None,
            catalogue=catalogue_ref is not None,
        )
        variables: dict[str, Any] = {"first": page_size, "after": None}
        if product_refs is not None:
            variables["productRef"] = list(product_refs)
        if location_refs is not None:
            variables["locationRef"] = list(location_refs)
        if catalogue_ref is not None:
            variables["catalogue"] = {"ref": catalogue_ref}
        seen_cursors: set[str] = set()
        while True:
            body = await self.graphql(query, variables)
            messages = graphql_messages(body)
            if messages:
                raise FluentGraphQLError(
                    f"inventoryPositions failed: {'; '.join(messages)[:500]}", messages=messages
                )
            data = body.get("data") or {}
            connection = data.get("inventoryPositions") or {}
            edges = connection.get("edges") or []
            yield [e["node"] for e in edges if isinstance(e, Mapping) and "node" in e]
            page_info = connection.get("pageInfo") or {}
            if not page_info.get("hasNextPage") or not edges:
                return
            # endCursor is not in every Fluent schema: the last edge's cursor always is.
            cursor = edges[-1].get("cursor")
            if not isinstance(cursor, str) or cursor in seen_cursors:
                raise FluentGraphQLError("inventoryPositions pagination did not advance")
            seen_cursors.add(cursor)
            variables["after"] = cursor
