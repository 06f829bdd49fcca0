"""What every part of the simulator shares: the demo credentials, Fluent's limits, the
timestamp format and the REST error (rendered by :mod:`.http`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

API_PREFIX = "/api/v4.1"
MAX_BATCH_ENTITIES = 5000
"""Records per batch (fact sheet section 3)."""
MAX_GRAPHQL_BYTES = 2 * 1024 * 1024
"""GraphQL request body limit; larger bodies get HTTP 413 (fact sheet section 3)."""
MAX_PAGE_SIZE = 5000
"""Largest ``first``/``last`` a connection takes (a GraphQL error beyond it)."""
DEFAULT_PAGE_SIZE = 100
"""Page size of a connection asked without ``first`` or ``last``."""

DEFAULT_USERNAME = "sim-user"
DEFAULT_PASSWORD = "sim-password"  # noqa: S105 - the simulator's public demo credential
DEFAULT_CLIENT_ID = "sim-client"
DEFAULT_CLIENT_SECRET = "sim-secret"  # noqa: S105 - the simulator's public demo credential
DEFAULT_RETAILER_ID = "1"

UNAUTHORIZED_MESSAGE = "Invalid user, Authorization header value does not belong to a valid user"

Clock = Callable[[], float]


def iso(ts: float) -> str:
    """Fluent-style UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{int(ts * 1000) % 1000:03d}Z"
    )


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()


def parse_iso(value: str) -> float:
    """An ISO 8601 timestamp as epoch seconds (no offset = UTC); ``ValueError`` if it is not one."""
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class ApiError(Exception):
    """A Fluent REST error: rendered as ``{"errors": [{"code", "message"}, ...]}``.

    ``messages`` holds every problem when there are several (one ``errors[]`` entry each).
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        messages: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or str(status)
        self.messages = messages or [message]

    def body(self) -> dict[str, list[dict[str, str]]]:
        return {"errors": [{"code": self.code, "message": m} for m in self.messages]}
