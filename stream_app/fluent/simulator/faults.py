"""Fault injection: what ``POST /_sim/faults`` accepts and which fault a call meets.

A fault object (one, or a list) is any of:
``{"status": 503, "count": 3, "path": "/api/v4.1/job"}`` the next N matching calls (``path``
is a prefix, any path if omitted; ``count`` defaults to 1); ``{"status": 429, "retryAfter":
1, "seconds": 2}`` for a duration on the simulator clock; ``{"latency": 0.5, "count": 10}``;
``{"expireTokens": true}`` (and ``expireRefreshTokens``); ``{"recordErrors": {"SKU-1":
"404"}}`` (key SKU or ``SKU:LOC``; value a code or ``{code, message}``): those batch records
fail with that ``responseCode``. ``DELETE /_sim/faults`` clears all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_app.fluent.simulator.common import ApiError, iso

RECORD_ERROR_MESSAGES = {
    "301": "Unauthorised",
    "400": "Bad request",
    "404": "Dependent record not found",
    "500": "Internal error",
}
FAULT_KEYS = frozenset(
    {
        "status",
        "count",
        "seconds",
        "path",
        "method",
        "retryAfter",
        "latency",
        "expireTokens",
        "expireRefreshTokens",
        "recordErrors",
        "message",
    }
)
DEFAULT_FAULT_MESSAGES = {429: "Too many requests", 503: "Service unavailable"}


@dataclass
class Fault:
    """An injected failure for matching calls: a status, a latency, or both."""

    status: int | None = None
    latency: float | None = None
    retry_after: float | None = None
    path: str | None = None
    method: str | None = None
    remaining: int | None = 1
    until: float | None = None
    message: str | None = None

    def active(self, now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.until is None or now < self.until

    def matches(self, method: str, path: str, now: float) -> bool:
        if not self.active(now):
            return False
        if self.path is not None and not path.startswith(self.path):
            return False
        return self.method is None or self.method.upper() == method.upper()

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1

    def response_message(self) -> str:
        return self.message or DEFAULT_FAULT_MESSAGES.get(self.status or 500, "Injected failure")

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "latency": self.latency,
            "retryAfter": self.retry_after,
            "path": self.path,
            "method": self.method,
            "remaining": self.remaining,
            "until": iso(self.until) if self.until is not None else None,
        }


@dataclass
class FaultSpec:
    """One parsed ``POST /_sim/faults`` object."""

    fault: Fault | None = None
    record_errors: dict[str, dict[str, str]] = field(default_factory=dict)
    expire_tokens: bool = False
    expire_refresh_tokens: bool = False


def parse_fault_spec(spec: Mapping[str, Any], now: float) -> FaultSpec:
    """Check one fault object; ``ApiError(400)`` names what is wrong with it."""
    unknown = set(spec) - FAULT_KEYS
    if unknown:
        raise ApiError(400, f"unknown fault keys: {', '.join(sorted(unknown))}")
    out = FaultSpec(
        expire_tokens=bool(spec.get("expireTokens") or spec.get("expireRefreshTokens")),
        expire_refresh_tokens=bool(spec.get("expireRefreshTokens")),
    )
    record_errors = spec.get("recordErrors")
    if record_errors is not None:
        if not isinstance(record_errors, dict):
            raise ApiError(400, "recordErrors must map SKU (or SKU:LOC) to a code")
        for ref, value in record_errors.items():
            if isinstance(value, dict):
                code = str(value.get("code", "500"))
                message = str(value.get("message") or RECORD_ERROR_MESSAGES.get(code, "Error"))
            else:
                code = str(value)
                message = RECORD_ERROR_MESSAGES.get(code, "Error")
            out.record_errors[str(ref)] = {"code": code, "message": message}
    status, latency = spec.get("status"), spec.get("latency")
    if status is None and latency is None:
        return out
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ):
        raise ApiError(400, "status must be an HTTP status code")
    if latency is not None and (
        isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0
    ):
        raise ApiError(400, "latency must be seconds >= 0")
    seconds, count = spec.get("seconds"), spec.get("count")
    retry_after = spec.get("retryAfter")
    if retry_after is None and status == 429:
        retry_after = 1
    try:
        out.fault = Fault(
            status=status,
            latency=float(latency) if latency is not None else None,
            retry_after=float(retry_after) if retry_after is not None else None,
            path=spec.get("path"),
            method=spec.get("method"),
            remaining=int(count) if count is not None else (None if seconds else 1),
            until=now + float(seconds) if seconds else None,
            message=spec.get("message"),
        )
    except (TypeError, ValueError):
        raise ApiError(400, "count, seconds and retryAfter must be numbers") from None
    return out


def take_faults(
    faults: list[Fault], method: str, path: str, now: float
) -> tuple[float, Fault | None]:
    """The latency and the status fault (if any) that apply to this call; consumes them
    and drops spent faults from ``faults`` (in place)."""
    latency, status_fault = 0.0, None
    latency_taken = False
    for fault in faults:
        if not fault.matches(method, path, now):
            continue
        used = False
        if fault.latency is not None and not latency_taken:
            latency, latency_taken, used = fault.latency, True, True
        if fault.status is not None and status_fault is None:
            status_fault, used = fault, True
        if used:
            fault.consume()
    faults[:] = [f for f in faults if f.active(now)]
    return latency, status_fault
