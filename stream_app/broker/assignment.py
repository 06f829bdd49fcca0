"""Which worker serves which partition: Faust's assignor's table of partition -> URL.

Faust keeps the web URL of the worker owning each changelog partition in its leader
assignor's private ``_tps_url`` (filled at every rebalance); the views forward a key's
request to that worker and ask every worker for app-wide answers.
:func:`check_assignment_access` is the start-up self-check (stream_app.broker.patches).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP


def owner_url(app: faust.App, topic: str, partition: int) -> str | None:
    """The web URL of the worker owning ``partition`` of ``topic`` (None: nobody yet)."""
    urls: dict[TP, str] = getattr(app.assignor, "_tps_url")  # noqa: B009 (private)
    return urls.get(TP(topic, partition))


def check_assignment_access(app: faust.App) -> str | None:
    """Why :func:`owner_url` cannot work on ``app`` (None: it can)."""
    assignor: Any = app.assignor
    if not isinstance(getattr(assignor, "_tps_url", None), dict):
        return "Faust's assignor has no _tps_url table (forwarding to a key's owner needs it)"
    return None
