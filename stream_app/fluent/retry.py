"""Retry timing: full-jitter exponential backoff that honours ``Retry-After`` (pure)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Passed to ``FluentClient.on_retry`` before each backoff wait."""

    method: str
    path: str
    attempt: int
    status: int | None
    error: str
    delay: float


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    rng: Callable[[], float],
    retry_after: float | None = None,
) -> float:
    """Full-jitter exponential backoff after failed ``attempt`` (1-based).

    ``rng() * min(cap, base * 2 ** (attempt - 1))``, and never less than ``retry_after``.
    """
    ceiling = min(cap, base * 2.0 ** max(attempt - 1, 0))
    delay = max(0.0, min(1.0, rng())) * ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(tz=UTC))).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None
