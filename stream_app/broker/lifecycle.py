"""The worker's lifecycle as the flows see it: whether it is ready, and what to close
before it stops.

:func:`is_ready` is read by the web views (``/health``, ``/metrics``) and by the timers
that must not act on tables still recovering (the sync flush, the release catch-up).
:func:`at_shutdown` closes a flow's connections (a consumer, an HTTP session) before the
worker tears its tasks down: a task cancelled mid-``close()`` leaves the resource open,
which aiokafka and aiohttp report as an ERROR at exit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust

Receiver = Callable[..., Awaitable[None]]


def is_ready(app: faust.App) -> bool:
    """Ready: the worker has an assignment and its tables finished recovery."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return bool(
        app.consumer is not None
        and recovery.completed.is_set()
        and not recovery.in_recovery
        and not app.rebalancing
    )


def at_shutdown(app: faust.App, close: Callable[[], Awaitable[None]]) -> Receiver:
    """Run ``close`` when the app stops (Faust's ``on_before_shutdown``, sent after its
    consumer stopped and before its tasks are cancelled); returns the receiver, for
    :func:`not_at_shutdown` when the resource is closed first."""

    async def receiver(sender: Any, **kwargs: Any) -> None:
        await close()

    app.on_before_shutdown.connect(receiver, weak=False)  # type: ignore[arg-type]
    return receiver


def not_at_shutdown(app: faust.App, receiver: Receiver) -> None:
    app.on_before_shutdown.disconnect(receiver)  # type: ignore[arg-type]
