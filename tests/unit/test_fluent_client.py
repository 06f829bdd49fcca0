"""Fluent client: pure rules (backoff, Retry-After, batch outcome) and token/retry behaviour
against the real simulator over loopback HTTP (time injected, nothing sleeps)."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import SecretStr

from stream_app.fluent import (
    FluentAuthError,
    FluentClient,
    FluentConfig,
    FluentRequestError,
    FluentUnavailable,
    InventoryRecord,
    RetryEvent,
)
from stream_app.fluent.client import (
    backoff_delay,
    batch_outcome,
    inventory_entities,
    parse_retry_after,
)
from stream_app.settings import load_settings
from tests.fixtures.fluent import FakeTime, FluentClientFactory, RunningSimulator

TODAY = date(2026, 11, 22)


# --- pure rules -----------------------------------------------------------------------------


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    delays = [backoff_delay(n, base=0.5, cap=4.0, rng=lambda: 1.0) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_delay(3, base=0.5, cap=4.0, rng=lambda: 0.25) == 0.5
    assert backoff_delay(3, base=0.5, cap=4.0, rng=lambda: 0.0) == 0.0


def test_backoff_never_waits_less_than_retry_after() -> None:
    assert backoff_delay(1, base=0.5, cap=4.0, rng=lambda: 1.0, retry_after=3.0) == 3.0
    assert backoff_delay(4, base=0.5, cap=4.0, rng=lambda: 1.0, retry_after=1.0) == 4.0


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None


def test_inventory_entities_are_absolute_last_on_hand() -> None:
    assert inventory_entities([InventoryRecord("SKU-1", "LOC-1", 7)], "9") == [
        {
            "retailerId": "9",
            "skuRef": "SKU-1",
            "locationRef": "LOC-1",
            "qty": 7,
            "correctedQty": 0,
            "type": "LAST_ON_HAND",
            "status": "ACTIVE",
        }
    ]


def test_batch_outcome_rule() -> None:
    records = [
        InventoryRecord("A", "L1", 1),
        InventoryRecord("B", "L1", 2),
        InventoryRecord("C", "L1", 3),
    ]
    body = {
        "status": "COMPLETE",
        "results": [
            {"entityRef": "A:L1", "responseCode": "200", "entityId": "1", "message": "OK"},
            {"entityRef": "B:L1", "responseCode": "404", "message": "Dependent record not found"},
        ],
    }
    outcome = batch_outcome("j", "b", body, records)
    assert outcome.accepted == [("A", "L1")]
    assert outcome.failed == {
        ("B", "L1"): "404 Dependent record not found",
        ("C", "L1"): "no result reported for this record",
    }
    # COMPLETE without any per-record result: everything was accepted.
    empty = batch_outcome("j", "b", {"status": "COMPLETE", "results": []}, records)
    assert empty.accepted == [("A", "L1"), ("B", "L1"), ("C", "L1")] and not empty.failed
    failed = batch_outcome("j", "b", {"status": "FAILED"}, records)
    assert set(failed.failed) == {("A", "L1"), ("B", "L1"), ("C", "L1")}
    # Without the records sent, only the results are judged (refs split at the last colon).
    bare = batch_outcome("j", "b", body)
    assert bare.accepted == [("A", "L1")] and list(bare.failed) == [("B", "L1")]


def test_config_from_settings_keeps_secrets_masked() -> None:
    settings = load_settings(
        fluent_base_url="https://acme.sandbox.api.fluentretail.com/",
        fluent_password="pw-from-settings-123",
        fluent_client_secret="cs-from-settings-456",
        fluent_max_attempts=3,
        retailer_id="42",
    )
    cfg = FluentConfig.from_settings(settings)
    assert cfg.base_url == "https://acme.sandbox.api.fluentretail.com"
    assert cfg.retailer_id == "42" and cfg.max_attempts == 3
    assert cfg.password.get_secret_value() == "pw-from-settings-123"
    assert cfg.job_name_prefix == "stream-app-inventory"
    for text in (repr(cfg), str(cfg), repr(FluentClient(cfg))):
        assert "pw-from-settings-123" not in text and "cs-from-settings-456" not in text
    assert FluentConfig.from_settings(load_settings()).base_url == "http://127.0.0.1:8787"


# --- tokens ---------------------------------------------------------------------------------


async def test_token_is_issued_once_and_reused(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    async with fluent_client_factory() as client:
        first = await client.ensure_job(TODAY, preprocessing=False)
        client.forget_job(TODAY, preprocessing=False)
        assert await client.ensure_job(TODAY, preprocessing=False) == first
    calls = await fluent_sim.calls()
    assert calls["/oauth/token"] == {"200": 1}
    assert client.token_requests_total == 1


async def test_expired_tokens_mid_run_are_refreshed_and_the_run_continues(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    job = await client.ensure_job(TODAY, preprocessing=False)
    await fluent_sim.fault(expireTokens=True)
    batch = await client.send_batch(job, [InventoryRecord("SKU-1", "LOC-1", 5)])
    outcome = await client.wait_batch(job, batch)
    assert outcome.accepted == [("SKU-1", "LOC-1")]
    calls = await fluent_sim.calls()
    assert calls[f"/api/v4.1/job/{job}/batch"] == {"401": 1, "200": 1}
    assert fluent_sim.state.grants == {"password": 1, "refresh_token": 1}
    assert client.retries_total == 0  # re-authentication is not a retry


async def test_expired_tokens_without_refresh_tokens_reauthenticate(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    fluent_sim.state.config.refresh_enabled = False
    client = fluent_client_factory()
    await client.ensure_job(TODAY, preprocessing=False)
    await fluent_sim.fault(expireTokens=True)
    await client.ensure_job(TODAY, preprocessing=True)
    assert fluent_sim.state.grants == {"password": 2}


async def test_refused_refresh_token_falls_back_to_password(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    await client.ensure_job(TODAY, preprocessing=False)
    await fluent_sim.fault(expireTokens=True, expireRefreshTokens=True)
    await client.ensure_job(TODAY, preprocessing=True)
    assert (await fluent_sim.calls())["/oauth/token"] == {"200": 2, "400": 1}
    assert fluent_sim.state.grants == {"password": 2}


async def test_token_is_refreshed_ahead_of_expiry(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    fluent_sim.state.config.token_ttl = 100
    client = fluent_client_factory(fake_time=fake_time)
    await client.ensure_job(TODAY, preprocessing=False)
    fake_time.now += 95  # inside the refresh margin (10% of 100 s), not yet expired
    await client.ensure_job(TODAY, preprocessing=True)
    calls = await fluent_sim.calls()
    assert fluent_sim.state.grants == {"password": 1, "refresh_token": 1}
    assert "401" not in calls["/api/v4.1/job"]


async def test_bad_credentials_fail_at_once_without_retry(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    client = fluent_client_factory(fake_time=fake_time, password=SecretStr("wrong-password"))
    with pytest.raises(FluentAuthError, match="Bad credentials"):
        await client.ensure_job(TODAY, preprocessing=False)
    assert await fluent_sim.calls() == {"/oauth/token": {"400": 1}}
    assert fake_time.sleeps == [] and client.retries_total == 0


async def test_401_right_after_a_fresh_token_fails_instead_of_looping(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    client = fluent_client_factory(fake_time=fake_time)
    await client.ensure_job(TODAY, preprocessing=False)  # holds a token now
    await fluent_sim.fault(status=401, count=50, path="/api/v4.1/job")
    with pytest.raises(FluentAuthError, match="freshly issued token"):
        await client.ensure_job(TODAY, preprocessing=True)
    calls = await fluent_sim.calls()
    assert calls["/oauth/token"] == {"200": 2}  # the first token and exactly one renewal
    assert calls["/api/v4.1/job"]["401"] == 2
    assert fake_time.sleeps == []


# --- retries --------------------------------------------------------------------------------


async def test_503_three_times_then_success(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    events: list[RetryEvent] = []
    client = fluent_client_factory(fake_time=fake_time, rng=lambda: 1.0, on_retry=events.append)
    await client.ensure_job(TODAY, preprocessing=False)  # token first
    await fluent_sim.fault(status=503, count=3, path="/api/v4.1/job")
    job = await client.ensure_job(TODAY, preprocessing=True)
    assert job
    assert fake_time.sleeps == [0.01, 0.02, 0.04]
    assert client.retries_total == 3
    assert client.last_backoff_seconds == 0.04
    assert [(e.attempt, e.status) for e in events] == [(1, 503), (2, 503), (3, 503)]
    assert client.last_error is not None and "503" in client.last_error
    assert (await fluent_sim.calls())["/api/v4.1/job"]["503"] == 3


async def test_429_retry_after_is_a_minimum_wait(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    client = fluent_client_factory(fake_time=fake_time, rng=lambda: 0.0)
    await fluent_sim.fault(status=429, retryAfter=2, count=2)
    job = await client.ensure_job(TODAY, preprocessing=False)
    assert job
    assert fake_time.sleeps == [2.0, 2.0]
    assert all(wait >= 2 for wait in fake_time.sleeps)


async def test_max_attempts_exhausted_raises_unavailable(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    client = fluent_client_factory(fake_time=fake_time, max_attempts=3)
    await client.ensure_job(TODAY, preprocessing=False)
    await fluent_sim.fault(status=502, count=100, path="/api/v4.1/job")
    with pytest.raises(FluentUnavailable) as info:
        await client.ensure_job(TODAY, preprocessing=True)
    assert info.value.status == 502
    assert len(fake_time.sleeps) == 2
    assert (await fluent_sim.calls())["/api/v4.1/job"]["502"] == 3


async def test_timeouts_are_retried(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    client = fluent_client_factory(fake_time=fake_time, timeout_seconds=0.1)
    await fluent_sim.fault(latency=0.4, count=1, path="/oauth/token")
    assert await client.ensure_job(TODAY, preprocessing=False)
    assert client.retries_total == 1
    assert client.last_error is not None and "Timeout" in client.last_error


async def test_connection_errors_are_retried_then_unavailable(fake_time: FakeTime) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = FluentConfig(
        base_url=f"http://127.0.0.1:{port}",
        username="u",
        password=SecretStr("p-secret"),
        client_id="c",
        client_secret=SecretStr("c-secret"),
        retailer_id="1",
        max_attempts=3,
        backoff_base=0.01,
    )
    async with FluentClient(cfg, sleep=fake_time.sleep, clock=fake_time.clock) as client:
        with pytest.raises(FluentUnavailable) as info:
            await client.ensure_job(TODAY, preprocessing=False)
    assert info.value.status is None
    assert len(fake_time.sleeps) == 2


async def test_client_errors_are_not_retried(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    client = fluent_client_factory(fake_time=fake_time)
    await fluent_sim.fault(status=403, path="/api/v4.1/job")
    with pytest.raises(FluentRequestError) as info:
        await client.ensure_job(TODAY, preprocessing=False)
    assert info.value.status == 403
    assert fake_time.sleeps == []


async def test_batch_over_5000_records_is_refused_locally(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    records = [InventoryRecord(f"SKU-{i}", "LOC", 1) for i in range(5001)]
    with pytest.raises(ValueError, match="5000"):
        await client.send_batch("1", records)
    with pytest.raises(ValueError):
        await client.send_batch("1", [])
    assert await fluent_sim.calls() == {}


async def test_secrets_never_reach_logs_errors_or_reprs(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    password = fluent_sim.state.config.password
    client_secret = fluent_sim.state.config.client_secret
    texts: list[str] = []
    tokens: set[str] = set()

    def collect_tokens() -> None:
        tokens.update(fluent_sim.state.access_tokens, fluent_sim.state.refresh_tokens)

    bad = fluent_client_factory(fake_time=fake_time, client_secret=SecretStr("wrong-secret-xyz"))
    with pytest.raises(FluentAuthError) as auth_error:
        await bad.ensure_job(TODAY, preprocessing=False)
    texts += [str(auth_error.value), repr(auth_error.value), repr(bad), str(bad.last_error)]

    client = fluent_client_factory(fake_time=fake_time, max_attempts=2)
    job = await client.ensure_job(TODAY, preprocessing=False)
    collect_tokens()
    await fluent_sim.fault(expireTokens=True)
    await client.send_batch(job, [InventoryRecord("SKU-1", "LOC-1", 1)])
    collect_tokens()
    await fluent_sim.fault(status=503, count=10)
    with pytest.raises(FluentUnavailable) as unavailable:
        await client.ensure_job(TODAY, preprocessing=True)
    texts += [str(unavailable.value), repr(client), repr(client.config), str(client.stats())]
    texts.append(caplog.text)

    secrets = [password, client_secret, "wrong-secret-xyz", *tokens]
    assert len(tokens) == 4  # two access and two refresh tokens were issued and are checked
    for text in texts:
        for secret in secrets:
            assert secret not in text
