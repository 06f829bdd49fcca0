"""The simulator over HTTP: Fluent's routes, the ``/_sim/`` inspection and fault routes,
the middleware (faults, bearer token, call log), the app factory and the server.

Fluent routes: ``POST /oauth/token``; ``POST|GET /api/v4.1/job``, ``GET /job/{id}``,
``GET /job/{id}/results``, ``POST /job/{id}/batch``, ``GET /job/{id}/batch/{batchId}``;
``POST /api/v4.1/event/async`` and ``/event/sync``; ``POST /graphql``. Inspection:
``GET /_sim/inventory|batches|jobs|orders|events|calls|faults``, ``POST /_sim/reset``,
``POST /_sim/process`` (complete every pending batch), ``POST|DELETE /_sim/faults``
(see :mod:`.faults`). ``/_sim/`` routes need no token and are not logged as calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import MultiDict

from stream_app.fluent.simulator.common import (
    API_PREFIX,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_RETAILER_ID,
    DEFAULT_USERNAME,
    MAX_GRAPHQL_BYTES,
    UNAUTHORIZED_MESSAGE,
    ApiError,
    Clock,
)
from stream_app.fluent.simulator.events import event_problems
from stream_app.fluent.simulator.faults import Fault
from stream_app.fluent.simulator.graphql import run_graphql
from stream_app.fluent.simulator.inspection import (
    batches_snapshot,
    calls_view,
    events_snapshot,
    faults_view,
    inventory_snapshot,
    jobs_snapshot,
    orders_snapshot,
)
from stream_app.fluent.simulator.state import SimulatorConfig, SimulatorState

log = logging.getLogger("stream_app.fluent.simulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE_KEY = web.AppKey("fluent_sim_state", SimulatorState)
MAX_REST_BYTES = 64 * 1024 * 1024
"""Largest REST body (a 5,000-record batch is a few MB)."""


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _error(exc: ApiError) -> web.Response:
    return _json(exc.body(), exc.status)


def _state(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise ApiError(400, "Malformed JSON request body") from None


def _fault_response(fault: Fault) -> web.Response:
    status = fault.status or 500
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        value = fault.retry_after
        headers["Retry-After"] = str(int(value)) if value == int(value) else str(value)
    if status == 401:
        return _json({"errors": [{"code": "401", "message": UNAUTHORIZED_MESSAGE}]}, 401, headers)
    body = {"errors": [{"code": str(status), "message": fault.response_message()}]}
    return _json(body, status, headers)


@web.middleware
async def _fluent_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Faults, bearer-token check and call counting for every Fluent (non-``/_sim/``) call."""
    path = request.path
    if path.startswith("/_sim/"):
        return await handler(request)
    state = _state(request)
    status = 500
    try:
        latency, fault = state.take_faults(request.method, path)
        if latency > 0:
            await asyncio.sleep(latency)
        if fault is not None:
            response: web.StreamResponse = _fault_response(fault)
        elif path != "/oauth/token" and not state.token_valid(request.headers.get("Authorization")):
            response = _json({"errors": [{"code": "401", "message": UNAUTHORIZED_MESSAGE}]}, 401)
        else:
            try:
                response = await handler(request)
            except ApiError as exc:
                response = _error(exc)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        state.record_call(path, status)


# --- Fluent: auth, jobs, batches, events ---------------------------------------------------


async def _oauth_token(request: web.Request) -> web.Response:
    state = _state(request)
    cfg = state.config
    params: MultiDict[str] = MultiDict(request.query)
    if request.can_read_body:
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, str):
                params[key] = value
    grant = params.get("grant_type")
    bad_credentials = _json({"error": "invalid_grant", "error_description": "Bad credentials"}, 400)
    if params.get("client_id") != cfg.client_id or params.get("client_secret") != cfg.client_secret:
        return bad_credentials
    if grant == "password":
        if params.get("username") != cfg.username or params.get("password") != cfg.password:
            return bad_credentials
        if params.get("scope") not in (None, "", "api"):
            return _json({"error": "invalid_scope", "error_description": "Invalid scope"}, 400)
        state.grants["password"] += 1
        return _json(state.issue_token())
    if grant == "refresh_token":
        if not state.use_refresh_token(params.get("refresh_token") or ""):
            return _json(
                {"error": "invalid_grant", "error_description": "Invalid refresh token"}, 400
            )
        state.grants["refresh_token"] += 1
        return _json(state.issue_token())
    return _json(
        {"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}, 400
    )


async def _create_job(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "'name' is required")
    job = _state(request).create_job(body)
    return _json({"id": job.id})


async def _list_jobs(request: web.Request) -> web.Response:
    state = _state(request)
    query = request.query
    jobs = [state.job_summary(j) for j in state.jobs.values()]
    if status := query.get("status"):
        jobs = [j for j in jobs if j["status"] == status.upper()]
    for key in ("name", "retailerId"):
        if wanted := query.get(key):
            jobs = [j for j in jobs if j[key] == wanted]
    try:
        start = max(int(query.get("start", "1")), 1)
        count = max(int(query.get("count", "100")), 1)
    except ValueError:
        raise ApiError(400, "'start' and 'count' must be integers") from None
    page = jobs[start - 1 : start - 1 + count]
    return _json({"start": start, "count": len(page), "total": len(jobs), "results": page})


async def _get_job(request: web.Request) -> web.Response:
    state = _state(request)
    return _json(state.job_detail(state.get_job(request.match_info["job_id"])))


async def _job_results(request: web.Request) -> web.Response:
    state = _state(request)
    return _json(state.job_results(state.get_job(request.match_info["job_id"])))


async def _create_batch(request: web.Request) -> web.Response:
    state = _state(request)
    job = state.get_job(request.match_info["job_id"])
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a batch object")
    batch = state.create_batch(job, body)
    return _json({"id": batch.id})


async def _get_batch(request: web.Request) -> web.Response:
    state = _state(request)
    job = state.get_job(request.match_info["job_id"])
    batch = state.batches.get(request.match_info["batch_id"])
    if batch is None or batch.job_id != job.id:
        raise ApiError(404, f"Batch {request.match_info['batch_id']} not found in job {job.id}")
    state.poll_batch(batch)
    return _json(state.batch_view(batch))


async def _event(request: web.Request, mode: str) -> web.Response:
    body = await _json_body(request)
    problems = event_problems(body)
    if problems:
        raise ApiError(400, problems[0], messages=problems)
    record = _state(request).record_event(mode, body)
    if mode == "async":
        return _json({"id": record["eventId"], "eventStatus": record["eventStatus"]})
    entity_id = body.get("entityId")
    return _json(
        {
            "eventId": record["eventId"],
            "entityId": str(entity_id) if entity_id is not None else None,
            "eventStatus": record["eventStatus"],
        }
    )


async def _event_async(request: web.Request) -> web.Response:
    return await _event(request, "async")


async def _event_sync(request: web.Request) -> web.Response:
    return await _event(request, "sync")


async def _graphql(request: web.Request) -> web.Response:
    too_large = _json({"errors": [{"message": "Request body exceeds 2 MB"}]}, 413)
    if (request.content_length or 0) > MAX_GRAPHQL_BYTES:
        return too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_GRAPHQL_BYTES:
            return too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json({"errors": [{"message": "Malformed JSON request body"}]}, 400)
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return _json({"errors": [{"message": "'query' is required"}]}, 400)
    variables = body.get("variables") or {}
    if not isinstance(variables, dict):
        return _json({"errors": [{"message": "'variables' must be an object"}]}, 400)
    operation_name = body.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return _json({"errors": [{"message": "'operationName' must be a string"}]}, 400)
    result = run_graphql(_state(request), body["query"], variables, operation_name)
    return _json(result)


# --- /_sim/ inspection and faults ------------------------------------------------------


async def _sim_inventory(request: web.Request) -> web.Response:
    return _json(inventory_snapshot(_state(request)))


async def _sim_batches(request: web.Request) -> web.Response:
    return _json(batches_snapshot(_state(request)))


async def _sim_jobs(request: web.Request) -> web.Response:
    return _json(jobs_snapshot(_state(request)))


async def _sim_orders(request: web.Request) -> web.Response:
    return _json(orders_snapshot(_state(request)))


async def _sim_events(request: web.Request) -> web.Response:
    return _json(events_snapshot(_state(request)))


async def _sim_calls(request: web.Request) -> web.Response:
    return _json(calls_view(_state(request)))


async def _sim_reset(request: web.Request) -> web.Response:
    _state(request).reset()
    return _json({"reset": True})


async def _sim_process(request: web.Request) -> web.Response:
    return _json({"completed": _state(request).process_pending()})


async def _sim_add_faults(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        body = await _json_body(request)
        specs = body if isinstance(body, list) else [body]
        for spec in specs:
            if not isinstance(spec, dict):
                raise ApiError(400, "a fault is a JSON object")
            state.add_fault(spec)
    except ApiError as exc:
        return _error(exc)
    return _json(faults_view(state))


async def _sim_get_faults(request: web.Request) -> web.Response:
    return _json(faults_view(_state(request)))


async def _sim_clear_faults(request: web.Request) -> web.Response:
    state = _state(request)
    state.clear_faults()
    return _json(faults_view(state))


class _SafeAccessLogger(AbstractAccessLogger):
    """Access log without query strings: a legacy token request carries credentials there."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s -> %s (%.1f ms)", request.method, request.path, response.status, time * 1000
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def create_simulator_app(
    state: SimulatorState | None = None,
    *,
    token_ttl: float = 3600,
    refresh_enabled: bool = True,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    retailer_id: str = DEFAULT_RETAILER_ID,
    refresh_token_ttl: float = 7 * 86400.0,
    batch_polls: int = 2,
    clock: Clock | None = None,
) -> web.Application:
    """The simulator as an aiohttp application.

    The keyword arguments set ``state.config`` (replacing the config of a given ``state``);
    ``clock`` (epoch seconds, default ``time.time``) replaces the state's clock when given.
    Fault objects for ``POST /_sim/faults`` are described in :mod:`.faults`.
    """
    if state is None:
        state = SimulatorState(clock or time.time)
    elif clock is not None:
        state.clock = clock
    state.config = SimulatorConfig(
        username=username,
        password=password,
        client_id=client_id,
        client_secret=client_secret,
        retailer_id=retailer_id,
        token_ttl=token_ttl,
        refresh_enabled=refresh_enabled,
        refresh_token_ttl=refresh_token_ttl,
        batch_polls=batch_polls,
    )
    app = web.Application(middlewares=[_fluent_middleware], client_max_size=MAX_REST_BYTES)
    app[STATE_KEY] = state
    job = f"{API_PREFIX}/job"
    app.router.add_post("/oauth/token", _oauth_token)
    app.router.add_post(job, _create_job)
    app.router.add_get(job, _list_jobs)
    app.router.add_get(f"{job}/{{job_id}}", _get_job)
    app.router.add_get(f"{job}/{{job_id}}/results", _job_results)
    app.router.add_post(f"{job}/{{job_id}}/batch", _create_batch)
    app.router.add_get(f"{job}/{{job_id}}/batch/{{batch_id}}", _get_batch)
    app.router.add_post(f"{API_PREFIX}/event/async", _event_async)
    app.router.add_post(f"{API_PREFIX}/event/sync", _event_sync)
    app.router.add_post("/graphql", _graphql)
    app.router.add_get("/_sim/inventory", _sim_inventory)
    app.router.add_get("/_sim/batches", _sim_batches)
    app.router.add_get("/_sim/jobs", _sim_jobs)
    app.router.add_get("/_sim/orders", _sim_orders)
    app.router.add_get("/_sim/events", _sim_events)
    app.router.add_get("/_sim/calls", _sim_calls)
    app.router.add_post("/_sim/reset", _sim_reset)
    app.router.add_post("/_sim/process", _sim_process)
    app.router.add_get("/_sim/faults", _sim_get_faults)
    app.router.add_post("/_sim/faults", _sim_add_faults)
    app.router.add_delete("/_sim/faults", _sim_clear_faults)
    return app


class SimulatorServer:
    """A running simulator (AppRunner + TCPSite on the current loop)."""

    def __init__(self, runner: web.AppRunner, state: SimulatorState, host: str, port: int) -> None:
        self.runner = runner
        self.state = state
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_simulator(host: str = "127.0.0.1", port: int = 0, **kw: Any) -> SimulatorServer:
    """Start the simulator on ``host:port`` (0 = a free port); ``kw`` go to the app factory."""
    state: SimulatorState | None = kw.pop("state", None)
    app = create_simulator_app(state, **kw)
    runner = web.AppRunner(
        app, access_log_class=_SafeAccessLogger, access_log=log, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound_port = int(address[1])
            break
    server = SimulatorServer(runner, app[STATE_KEY], host, bound_port)
    log.info("Fluent simulator listening on %s", server.url)
    return server


async def serve_simulator(host: str, port: int, stop: asyncio.Event, **kw: Any) -> None:
    """Run the simulator until ``stop`` is set; logs (never prints) where it listens."""
    server = await start_simulator(host, port, **kw)
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("Fluent simulator stopped")
