"""What the Fluent client raises, and how Fluent's error bodies read as messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class FluentError(Exception):
    """Base class of every Fluent client error."""


class FluentAuthError(FluentError):
    """Fluent refused the credentials, or a freshly issued token. Retrying will not help."""


class FluentUnavailable(FluentError):
    """Fluent did not answer usefully within ``max_attempts`` (5xx, 429, timeouts)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FluentRequestError(FluentError):
    """Fluent rejected the request (a 4xx other than 401/429): fix the request, not retry."""

    def __init__(self, message: str, *, status: int, messages: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.messages = tuple(messages)


class FluentJobClosed(FluentRequestError):
    """The job no longer takes batches (closed at midnight UTC, or unknown)."""


class FluentGraphQLError(FluentError):
    """A GraphQL response carried ``errors[]``."""

    def __init__(self, message: str, *, messages: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.messages = tuple(messages)


def graphql_messages(body: Mapping[str, Any]) -> list[str]:
    """The ``message`` of each entry of a GraphQL body's ``errors[]``."""
    errors = body.get("errors")
    if not errors:
        return []
    if not isinstance(errors, list):
        return [str(errors)]
    return [str(e.get("message", e)) if isinstance(e, Mapping) else str(e) for e in errors]


def error_messages(body: Any, text: str) -> list[str]:
    """What a failed REST answer says: ``errors[]``, an OAuth ``error``, a ``message``, or
    the start of the text."""
    if isinstance(body, Mapping):
        if isinstance(body.get("errors"), list) and (out := graphql_messages(body)):
            return out
        if "error" in body:
            desc = body.get("error_description")
            return [f"{body['error']}: {desc}" if desc else str(body["error"])]
        if isinstance(body.get("message"), str):
            return [body["message"]]
    return [text[:200]] if text else []
