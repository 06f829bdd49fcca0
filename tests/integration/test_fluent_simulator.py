"""The Fluent simulator over real HTTP: Fluent's contracts (auth, jobs, batches, GraphQL,
limits), the /_sim/ endpoints, and the client's job/batch/order flows against it."""

from __future__ import annotations

import asyncio
import io
import socket
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from stream_app.fluent import (
    FluentGraphQLError,
    FluentJobClosed,
    FluentUnavailable,
    InventoryRecord,
)
from stream_app.fluent.simulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    MAX_BATCH_ENTITIES,
    UNAUTHORIZED_MESSAGE,
    serve_simulator,
)
from tests.fixtures.fluent import FakeTime, FluentClientFactory, RunningSimulator

PASSWORD_GRANT = {
    "grant_type": "password",
    "username": DEFAULT_USERNAME,
    "password": DEFAULT_PASSWORD,
    "client_id": DEFAULT_CLIENT_ID,
    "client_secret": DEFAULT_CLIENT_SECRET,
    "scope": "api",
}
DAY = date(2026, 11, 22)


async def call(
    sim: RunningSimulator,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json: Any = None,
    data: Any = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with sim.session.request(
        method, sim.url + path, json=json, data=data, params=params, headers=headers
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def get_token(sim: RunningSimulator) -> str:
    status, body = await call(sim, "POST", "/oauth/token", data=PASSWORD_GRANT)
    assert status == 200
    token: str = body["access_token"]
    return token


def entity(sku: str, qty: int, location: str = "LOC-1") -> dict[str, Any]:
    return {"retailerId": "1", "skuRef": sku, "locationRef": location, "qty": qty}


# --- authentication -------------------------------------------------------------------------


async def test_password_grant_as_form_body_or_query_string(fluent_sim: RunningSimulator) -> None:
    status, body = await call(fluent_sim, "POST", "/oauth/token", data=PASSWORD_GRANT)
    assert status == 200
    assert body["token_type"] == "bearer" and body["scope"] == "api"
    assert body["expires_in"] == 3600 and body["Retailer_id"] == 1
    assert body["access_token"] and body["refresh_token"]
    status, body = await call(fluent_sim, "POST", "/oauth/token", params=PASSWORD_GRANT)
    assert status == 200 and body["access_token"]

    bad = {**PASSWORD_GRANT, "password": "nope"}
    status, body = await call(fluent_sim, "POST", "/oauth/token", data=bad)
    assert (status, body) == (
        400,
        {"error": "invalid_grant", "error_description": "Bad credentials"},
    )

    fluent_sim.state.config.refresh_enabled = False
    status, body = await call(fluent_sim, "POST", "/oauth/token", data=PASSWORD_GRANT)
    assert status == 200 and "refresh_token" not in body


async def test_refresh_tokens_are_single_use_and_expire(fluent_sim: RunningSimulator) -> None:
    _, issued = await call(fluent_sim, "POST", "/oauth/token", data=PASSWORD_GRANT)
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": issued["refresh_token"],
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
    }
    status, renewed = await call(fluent_sim, "POST", "/oauth/token", data=refresh)
    assert status == 200 and renewed["access_token"] != issued["access_token"]
    invalid = {"error": "invalid_grant", "error_description": "Invalid refresh token"}
    assert await call(fluent_sim, "POST", "/oauth/token", data=refresh) == (400, invalid)

    fluent_sim.clock.advance(fluent_sim.state.config.refresh_token_ttl + 1)
    expired = {**refresh, "refresh_token": renewed["refresh_token"]}
    assert await call(fluent_sim, "POST", "/oauth/token", data=expired) == (400, invalid)


async def test_fluent_calls_need_a_valid_unexpired_bearer_token(
    fluent_sim: RunningSimulator,
) -> None:
    unauthorized = (401, {"errors": [{"code": "401", "message": UNAUTHORIZED_MESSAGE}]})
    assert await call(fluent_sim, "GET", "/api/v4.1/job") == unauthorized
    assert await call(fluent_sim, "GET", "/api/v4.1/job", token="made-up") == unauthorized
    token = await get_token(fluent_sim)
    assert (await call(fluent_sim, "GET", "/api/v4.1/job", token=token))[0] == 200
    fluent_sim.clock.advance(3601)
    assert await call(fluent_sim, "GET", "/api/v4.1/job", token=token) == unauthorized
    query = {"query": "query { inventoryPositions { edges { cursor } } }"}
    assert await call(fluent_sim, "POST", "/graphql", json=query) == unauthorized


# --- jobs and batches over raw HTTP -----------------------------------------------------------


async def test_job_validation_listing_and_detail(fluent_sim: RunningSimulator) -> None:
    token = await get_token(fluent_sim)
    assert await call(
        fluent_sim, "POST", "/api/v4.1/job", token=token, json={"retailerId": "1"}
    ) == (
        400,
        {"errors": [{"code": "400", "message": "'name' is required"}]},
    )
    assert await call(fluent_sim, "POST", "/api/v4.1/job", token=token, json={"name": "x"}) == (
        400,
        {"errors": [{"code": "NotNull", "message": "'retailerId' is required"}]},
    )
    body = {"name": "delta", "retailerId": "1", "meta": {"preprocessing": "skip"}}
    status, created = await call(fluent_sim, "POST", "/api/v4.1/job", token=token, json=body)
    assert status == 200 and isinstance(created["id"], str)
    await call(
        fluent_sim, "POST", "/api/v4.1/job", token=token, json={"name": "full", "retailerId": "1"}
    )

    _, listed = await call(
        fluent_sim, "GET", "/api/v4.1/job", token=token, params={"name": "delta", "status": "OPEN"}
    )
    assert [j["jobId"] for j in listed["results"]] == [created["id"]]
    _, closed = await call(
        fluent_sim, "GET", "/api/v4.1/job", token=token, params={"status": "CLOSED"}
    )
    assert closed["results"] == []

    _, detail = await call(fluent_sim, "GET", f"/api/v4.1/job/{created['id']}", token=token)
    assert detail["jobId"] == created["id"] and detail["status"] == "OPEN"
    assert detail["meta"] == {"preprocessing": "skip"} and detail["batch"] == []
    assert (await call(fluent_sim, "GET", "/api/v4.1/job/999", token=token))[0] == 404


async def test_batch_validation(fluent_sim: RunningSimulator) -> None:
    token = await get_token(fluent_sim)
    _, job = await call(
        fluent_sim, "POST", "/api/v4.1/job", token=token, json={"name": "j", "retailerId": "1"}
    )
    path = f"/api/v4.1/job/{job['id']}/batch"
    good = {"action": "UPSERT", "entityType": "INVENTORY", "entities": [entity("A", 1)]}

    async def refused(body: dict[str, Any]) -> str:
        status, answer = await call(fluent_sim, "POST", path, token=token, json=body)
        assert status == 400
        message: str = answer["errors"][0]["message"]
        return message

    assert "action" in await refused({**good, "action": "CREATE"})
    assert "entityType" in await refused({**good, "entityType": "ORDER"})
    message = await refused({**good, "entities": [{"retailerId": "1", "locationRef": "L"}]})
    assert "'skuRef'" in message and "'qty'" in message and "'locationRef'" not in message
    too_many = [entity(f"S{i}", 1) for i in range(MAX_BATCH_ENTITIES + 1)]
    assert "5000" in await refused({**good, "entities": too_many})
    assert (await call(fluent_sim, "POST", "/api/v4.1/job/999/batch", token=token, json=good))[
        0
    ] == 404
    assert (await fluent_sim.get("/_sim/batches")) == []


async def test_batch_goes_pending_running_complete_and_applies_on_complete(
    fluent_sim: RunningSimulator,
) -> None:
    token = await get_token(fluent_sim)
    _, job = await call(
        fluent_sim, "POST", "/api/v4.1/job", token=token, json={"name": "j", "retailerId": "1"}
    )
    body = {"action": "UPSERT", "entityType": "INVENTORY", "entities": [entity("A", 4)]}
    _, batch = await call(
        fluent_sim, "POST", f"/api/v4.1/job/{job['id']}/batch", token=token, json=body
    )
    [seen] = await fluent_sim.get("/_sim/batches")
    assert seen["status"] == "PENDING" and seen["entityCount"] == 1 and seen["preprocessing"]
    path = f"/api/v4.1/job/{job['id']}/batch/{batch['id']}"
    _, running = await call(fluent_sim, "GET", path, token=token)
    assert running["status"] == "RUNNING" and running["results"] == []
    assert await fluent_sim.get("/_sim/inventory") == []
    _, complete = await call(fluent_sim, "GET", path, token=token)
    assert complete["status"] == "COMPLETE"
    assert complete["total"] == 1 and complete["jobId"] == job["id"]
    [result] = complete["results"]
    assert (
        result["entityRef"] == "A:LOC-1" and result["responseCode"] == "200" and result["entityId"]
    )
    [row] = await fluent_sim.get("/_sim/inventory")
    assert row["qty"] == 4 and row["batchId"] == batch["id"] and row["correctedQty"] == 0
    _, detail = await call(fluent_sim, "GET", f"/api/v4.1/job/{job['id']}", token=token)
    assert detail["batch"][0]["status"] == "COMPLETE"


async def test_graphql_body_over_2mb_is_413(fluent_sim: RunningSimulator) -> None:
    token = await get_token(fluent_sim)
    query = "query { inventoryPositions { edges { cursor } } } #" + "x" * (2 * 1024 * 1024)
    body = io.BytesIO(orjson.dumps({"query": query}))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with fluent_sim.session.post(
        fluent_sim.url + "/graphql", data=body, headers=headers
    ) as resp:
        assert resp.status == 413


async def test_timed_faults_follow_the_simulator_clock(fluent_sim: RunningSimulator) -> None:
    await fluent_sim.fault(status=429, retryAfter=3, seconds=2, path="/oauth/token")
    async with fluent_sim.session.post(
        fluent_sim.url + "/oauth/token", data=PASSWORD_GRANT
    ) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "3"
    assert (await call(fluent_sim, "POST", "/oauth/token", data=PASSWORD_GRANT))[0] == 429
    fluent_sim.clock.advance(2.5)
    assert (await call(fluent_sim, "POST", "/oauth/token", data=PASSWORD_GRANT))[0] == 200
    assert (await fluent_sim.get("/_sim/faults"))["faults"] == []
    assert (await fluent_sim.calls())["/oauth/token"] == {"429": 2, "200": 1}


async def test_reset_forgets_data_but_not_tokens(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    job = await client.ensure_job(DAY, preprocessing=False)
    await fluent_sim.fault(recordErrors={"X": "500"})
    assert await fluent_sim.request("POST", "/_sim/reset") == {"reset": True}
    assert await fluent_sim.get("/_sim/jobs") == []
    assert await fluent_sim.calls() == {}
    assert (await fluent_sim.get("/_sim/faults"))["recordErrors"] == {}
    client.forget_job(DAY, preprocessing=False)
    assert await client.ensure_job(DAY, preprocessing=False) != job  # ids are never reused
    assert fluent_sim.state.grants["password"] == 0  # the old token still works


# --- client flows against the simulator --------------------------------------------------------


async def test_send_and_wait_applies_absolute_quantities(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    for qty in (5, 3):
        records = [InventoryRecord("SKU-1", "LOC-1", qty), InventoryRecord("SKU-2", "LOC-1", 9)]
        job, batch = await client.submit_batch(records, day=DAY, preprocessing=False)
        outcome = await client.wait_batch(job, batch, records=records)
        assert outcome.status == "COMPLETE" and not outcome.failed
        assert outcome.accepted == [("SKU-1", "LOC-1"), ("SKU-2", "LOC-1")]
    inventory = await fluent_sim.get("/_sim/inventory")
    assert [(r["skuRef"], r["qty"]) for r in inventory] == [("SKU-1", 3), ("SKU-2", 9)]
    batches = await fluent_sim.get("/_sim/batches")
    assert [b["preprocessing"] for b in batches] == [False, False]
    [job_view] = await fluent_sim.get("/_sim/jobs")
    assert job_view["name"] == "stream-app-inventory-delta-2026-11-22"
    assert job_view["meta"] == {"preprocessing": "skip"} and job_view["batchCount"] == 2


async def test_delta_and_full_jobs_are_distinct(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    delta = await client.ensure_job(DAY, preprocessing=False)
    full = await client.ensure_job(DAY, preprocessing=True)
    assert delta != full
    jobs = {j["jobId"]: j for j in await fluent_sim.get("/_sim/jobs")}
    assert jobs[full]["name"] == "stream-app-inventory-full-2026-11-22"
    assert jobs[full]["meta"] is None and jobs[full]["preprocessing"] is True
    assert jobs[delta]["preprocessing"] is False
    assert client.jobs == {"2026-11-22/delta": delta, "2026-11-22/full": full}


async def test_job_is_reused_across_client_restarts(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    async with fluent_client_factory() as first:
        job = await first.ensure_job(DAY, preprocessing=False)
        assert await first.ensure_job(DAY, preprocessing=False) == job
    async with fluent_client_factory() as restarted:
        assert await restarted.ensure_job(DAY, preprocessing=False) == job
    assert len(await fluent_sim.get("/_sim/jobs")) == 1
    assert (await fluent_sim.calls())["/api/v4.1/job"] == {"200": 3}  # 2 searches, 1 create


async def test_day_rollover_closes_the_old_job_and_a_new_one_is_created(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    fluent_sim.clock.set(datetime(2026, 11, 22, 23, 59, 0, tzinfo=UTC))
    client = fluent_client_factory()
    records = [InventoryRecord("SKU-1", "LOC-1", 1)]
    old = await client.ensure_job(DAY, preprocessing=False)
    await client.send_batch(old, records)

    fluent_sim.clock.set(datetime(2026, 11, 23, 0, 0, 30, tzinfo=UTC))
    with pytest.raises(FluentJobClosed):
        await client.send_batch(old, records)
    next_day = date(2026, 11, 23)
    new, batch = await client.submit_batch(records, day=next_day, preprocessing=False)
    assert new != old
    assert (await client.wait_batch(new, batch)).accepted == [("SKU-1", "LOC-1")]
    status = {j["jobId"]: j["status"] for j in await fluent_sim.get("/_sim/jobs")}
    assert status == {old: "CLOSED", new: "OPEN"}
    assert client.jobs == {"2026-11-23/delta": new}  # the old day left the cache


async def test_closed_cached_job_is_replaced_once(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    records = [InventoryRecord("SKU-1", "LOC-1", 1)]
    first = await client.ensure_job(DAY, preprocessing=False)
    fluent_sim.state.jobs[first].closed = True  # Fluent closed it early ("open for 24 h")
    job, batch = await client.submit_batch(records, day=DAY, preprocessing=False)
    assert job != first and batch
    assert client.jobs == {"2026-11-22/delta": job}
    calls = await fluent_sim.calls()
    assert calls[f"/api/v4.1/job/{first}/batch"] == {"400": 1}
    assert calls[f"/api/v4.1/job/{job}/batch"] == {"200": 1}


async def test_simulator_rejects_more_than_5000_records(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    token = await get_token(fluent_sim)
    client = fluent_client_factory()
    job = await client.ensure_job(DAY, preprocessing=False)
    entities = [entity(f"SKU-{i}", 1) for i in range(5001)]
    body = {"action": "UPSERT", "entityType": "INVENTORY", "entities": entities}
    status, answer = await call(
        fluent_sim, "POST", f"/api/v4.1/job/{job}/batch", token=token, json=body
    )
    assert status == 400 and "maximum is 5000" in answer["errors"][0]["message"]
    records = [InventoryRecord(f"SKU-{i}", "LOC-1", 1) for i in range(5000)]
    batch = await client.send_batch(job, records)  # exactly 5000 is fine
    outcome = await client.wait_batch(job, batch, records=records)
    assert len(outcome.accepted) == 5000


async def test_per_record_errors_are_reported_and_not_applied(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    await fluent_sim.fault(recordErrors={"SKU-1": "404", "SKU-3:LOC-2": "500"})
    client = fluent_client_factory()
    records = [
        InventoryRecord("SKU-1", "LOC-1", 5),
        InventoryRecord("SKU-2", "LOC-1", 6),
        InventoryRecord("SKU-3", "LOC-1", 7),
        InventoryRecord("SKU-3", "LOC-2", 8),
    ]
    job, batch = await client.submit_batch(records, day=DAY, preprocessing=False)
    outcome = await client.wait_batch(job, batch, records=records)
    assert outcome.failed == {
        ("SKU-1", "LOC-1"): "404 Dependent record not found",
        ("SKU-3", "LOC-2"): "500 Internal error",
    }
    assert outcome.accepted == [("SKU-2", "LOC-1"), ("SKU-3", "LOC-1")]
    applied = {(r["skuRef"], r["locationRef"]) for r in await fluent_sim.get("/_sim/inventory")}
    assert applied == {("SKU-2", "LOC-1"), ("SKU-3", "LOC-1")}
    [seen] = await fluent_sim.get("/_sim/batches")
    assert seen["failedCount"] == 2

    await fluent_sim.clear_faults()
    job, batch = await client.submit_batch(records[:1], day=DAY, preprocessing=False)
    assert (await client.wait_batch(job, batch, records=records[:1])).accepted == [
        ("SKU-1", "LOC-1")
    ]


async def test_wait_batch_gives_up_after_poll_timeout(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
    fake_time: FakeTime,
) -> None:
    fluent_sim.state.config.batch_polls = 10_000
    client = fluent_client_factory(fake_time=fake_time, poll_interval=0.5, poll_timeout=10)
    job, batch = await client.submit_batch(
        [InventoryRecord("SKU-1", "LOC-1", 1)], day=DAY, preprocessing=False
    )
    with pytest.raises(FluentUnavailable, match="not COMPLETE"):
        await client.wait_batch(job, batch)
    assert fake_time.sleeps[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(fake_time.sleeps) <= 5.0 and sum(fake_time.sleeps) == pytest.approx(10)


async def test_create_order_duplicate_ref_is_success_without_a_second_order(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    order = {
        "ref": "PO-1001",
        "type": "HD",
        "retailer": {"id": "1"},
        "customer": {"id": "7"},
        "items": [{"ref": "PO-1001-1", "productRef": "SKU-1", "quantity": 2}],
    }
    assert await client.create_order(order) == ("PO-1001", True)
    assert await client.create_order(order) == ("PO-1001", False)
    orders = await fluent_sim.get("/_sim/orders")
    assert [(o["ref"], o["items"]) for o in orders] == [("PO-1001", order["items"])]


async def test_create_order_reports_graphql_errors(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    with pytest.raises(FluentGraphQLError, match="items"):
        await client.create_order(
            {"ref": "PO-2", "type": "HD", "retailer": {"id": "1"}, "customer": {"id": "1"}}
        )
    with pytest.raises(ValueError):
        await client.create_order({"type": "HD"})
    assert await fluent_sim.get("/_sim/orders") == []


def order_input(ref: str, **changes: Any) -> dict[str, Any]:
    base = {
        "ref": ref,
        "type": "HD",
        "retailer": {"id": "1"},
        "customer": {"id": "7"},
        "items": [{"ref": f"{ref}-1", "productRef": "SKU-1", "quantity": 1}],
    }
    return {**base, **changes}


async def test_create_orders_in_one_request_reports_each_order(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    assert await client.create_orders([order_input("PO-1")]) == [("PO-1", True)]
    calls_before = sum((await fluent_sim.get("/_sim/calls")).get("/graphql", {}).values())
    answers = await client.create_orders(
        [
            order_input("PO-2"),
            order_input("PO-1"),  # exists: success, not created again
            order_input("PO-3", items=None),  # invalid: fails alone
            order_input("PO-4"),
        ]
    )
    assert answers[0] == ("PO-2", True) and answers[1] == ("PO-1", False)
    assert answers[2][0] == "PO-3" and isinstance(answers[2][1], str)
    assert "items" in answers[2][1]
    assert answers[3] == ("PO-4", True)
    calls = sum((await fluent_sim.get("/_sim/calls")).get("/graphql", {}).values())
    assert calls == calls_before + 1
    orders = await fluent_sim.get("/_sim/orders")
    assert sorted(o["ref"] for o in orders) == ["PO-1", "PO-2", "PO-4"]
    assert await client.create_orders([]) == []
    with pytest.raises(ValueError):
        await client.create_orders([order_input("PO-5"), {"type": "HD"}])


async def test_create_orders_whole_request_failure_raises(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory(max_attempts=2)
    await fluent_sim.fault(status=503, path="/graphql", count=2)
    with pytest.raises(FluentUnavailable):
        await client.create_orders([order_input("PO-9"), order_input("PO-10")])
    assert await fluent_sim.get("/_sim/orders") == []


async def test_inventory_positions_follow_cursor_pagination(
    fluent_sim: RunningSimulator,
    fluent_client_factory: FluentClientFactory,
) -> None:
    client = fluent_client_factory()
    records = [InventoryRecord(f"SKU-{i:03d}", "LOC-1", i) for i in range(120)]
    job, batch = await client.submit_batch(records, day=DAY, preprocessing=True)
    await client.wait_batch(job, batch, records=records)

    positions = await client.inventory_positions(page_size=50)
    assert len(positions) == 120
    assert [p["productRef"] for p in positions] == [r.sku for r in records]
    assert positions[7]["onHand"] == 7 and positions[7]["ref"] == "SKU-007:LOC-1:DEFAULT"
    assert (await fluent_sim.calls())["/graphql"] == {"200": 3}

    some = await client.inventory_positions(page_size=50, product_refs=["SKU-001", "SKU-119"])
    assert [p["onHand"] for p in some] == [1, 119]


async def test_serve_simulator_runs_until_stopped() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve_simulator("127.0.0.1", port, stop, token_ttl=60))
    url = f"http://127.0.0.1:{port}/oauth/token"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.post(url, data=PASSWORD_GRANT) as resp:
                    body = await resp.json()
                    break
            except aiohttp.ClientConnectionError:
                assert loop.time() < deadline, "simulator did not start"
                await asyncio.sleep(0.01)
    assert body["expires_in"] == 60
    stop.set()
    await asyncio.wait_for(task, 5)
