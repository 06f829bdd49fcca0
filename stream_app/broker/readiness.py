"""Whether this worker is ready: it has an assignment and its tables finished recovery.

Read by the web views (``/health``, ``/metrics``) and by the timers that must not act on
tables still recovering (the sync flush, the release catch-up).
"""

from __future__ import annotations

import faust


def is_ready(app: faust.App) -> bool:
    """Ready: the worker has an assignment and its tables finished recovery."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return bool(
        app.consumer is not None
        and recovery.completed.is_set()
        and not recovery.in_recovery
        and not app.rebalancing
    )
