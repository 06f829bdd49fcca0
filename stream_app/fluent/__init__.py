"""Fluent Commerce: the async client used by the sync and the release, and a local simulator.

The simulator lives in :mod:`stream_app.fluent.simulator` (import it explicitly).
"""

from stream_app.fluent.client import (
    MAX_BATCH_RECORDS,
    BatchOutcome,
    FluentAuthError,
    FluentClient,
    FluentConfig,
    FluentError,
    FluentGraphQLError,
    FluentJobClosed,
    FluentRequestError,
    FluentUnavailable,
    InventoryRecord,
    RetryEvent,
    SubmittedBatch,
)

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
]
