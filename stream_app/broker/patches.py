"""The one place that patches Faust/aiokafka internals on an app, and checks they took.

:func:`install` runs once, right after the ``faust.App`` is made (before any topic or
agent exists: the flow control must be in place when stream queues register with it).
:func:`verify` runs when the worker's consumer has started (a task of the app) and fails
the worker loudly if a patch did not take effect: every patch depends on private names
of the versions in :data:`PINNED`, and an upgrade that renamed one would otherwise
silently bring back the bug it works around.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import faust

from stream_app.broker import fetch_codec
from stream_app.broker.assignment import check_assignment_access
from stream_app.broker.fetch_scope import fetch_consumed_only
from stream_app.broker.flow_control import check_flow_control, install_flow_control
from stream_app.broker.stores import check_store_access
from stream_app.broker.tansu_offsets import (
    WRAPPED_FLAG,
    install_end_offset_correction,
    tune_embedded_consumer,
)
from stream_app.settings import Settings

log = logging.getLogger(__name__)

#: the versions whose private names the patches use (pyproject pins them)
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}

#: how long :func:`verify` waits for the worker's consumer to exist
VERIFY_WITHIN = 120.0


class PatchNotApplied(RuntimeError):
    """A patch of a Faust/aiokafka internal did not take effect."""


def pinned_versions() -> str:
    found = []
    for name, wanted in PINNED.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "missing"
        found.append(f"{name} {have}" + ("" if have == wanted else f" (written for {wanted})"))
    return ", ".join(found)


def install(app: faust.App, settings: Settings) -> None:
    """Every patch this app needs, on this app instance only (but the fetch codec:
    aiokafka's protocol classes are the process's, and it gives the same bytes)."""
    install_flow_control(app)
    if settings.consumer_fast_fetch_codec:
        fetch_codec.install()  # process-wide: aiokafka's protocol classes
    if settings.consumer_fetch_consumed_only:
        fetch_consumed_only(app)
    if settings.embedded or settings.correct_end_offsets:
        tune_embedded_consumer(
            app, settings.consumer_fetch_max_wait_ms, settings.consumer_prefetch_backoff_ms
        )
        install_end_offset_correction(app, settings.bootstrap_servers)

    @app.task
    async def verify_patches() -> None:
        await verify(app, settings)


def problems(app: faust.App, settings: Settings) -> list[str]:
    """What did not take effect (empty: everything did). Needs the started consumer."""
    found: list[str] = []
    try:
        check_flow_control(app)
    except RuntimeError as exc:
        found.append(str(exc))
    problem = check_assignment_access(app)
    if problem is not None:
        found.append(problem)
    for table in app.tables.values():
        problem = check_store_access(table)
        if problem is not None:
            found.append(problem)
    if settings.consumer_fast_fetch_codec and not fetch_codec.installed():
        found.append("fetch codec: aiokafka's FetchRequest_v11/FetchResponse_v11 are not ours")
    consumer: Any = app.consumer
    thread: Any = getattr(consumer, "_thread", None)
    client: Any = getattr(thread, "_consumer", None)
    if client is None:
        return [*found, "Faust's consumer thread has no aiokafka consumer (_thread._consumer)"]
    fetcher: Any = getattr(client, "_fetcher", None)
    if settings.consumer_fetch_consumed_only:
        actions = getattr(fetcher, "_get_actions_per_node", None)
        if not hasattr(actions, "__wrapped__"):
            found.append("fetch scope: aiokafka's Fetcher._get_actions_per_node is not wrapped")
    if settings.embedded or settings.correct_end_offsets:
        if not getattr(thread, WRAPPED_FLAG, False):
            found.append("end offsets: the consumer thread's highwaters() is not wrapped")
        wait = settings.consumer_fetch_max_wait_ms
        if wait > 0 and not getattr(client, "_fetch_max_wait_ms", wait + 1) <= wait:
            found.append("consumer tuning: aiokafka's fetch_max_wait_ms was not lowered")
        backoff = settings.consumer_prefetch_backoff_ms
        if backoff > 0 and getattr(fetcher, "_prefetch_backoff", None) != backoff / 1000:
            found.append("consumer tuning: aiokafka's prefetch backoff was not set")
    return found


async def verify(app: faust.App, settings: Settings) -> None:
    """Wait for the worker's aiokafka consumer, then check every patch; crash the worker
    with the reasons and the installed versions if one did not take."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + VERIFY_WITHIN
    while loop.time() < deadline:
        thread = getattr(app.consumer, "_thread", None) if app.consumer else None
        client = getattr(thread, "_consumer", None)
        if client is not None and getattr(client, "_fetcher", None) is not None:
            break
        await asyncio.sleep(0.2)
    missing = problems(app, settings)
    if not missing:
        log.info("Faust/aiokafka patches checked: all in effect (%s)", pinned_versions())
        return
    message = (
        "a patch of a Faust/aiokafka internal did not take effect: " + "; ".join(missing)
        + f". Installed: {pinned_versions()}."
    )
    log.critical(message)
    await app.crash(PatchNotApplied(message))
