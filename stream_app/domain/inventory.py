"""Channel aggregation and ATP: pure functions over one SKU/location's state.

The state of a SKU/location is a plain JSON-safe dict so it can be stored as it is::

    {"channels": {CHANNEL: {"onHand", "reserved", "buffer", "updatedAt", "v", "deleted"}},
     "expected": {REF: {"quantity", "expectedOn", "updatedAt", "v", "deleted"}}}

``v`` is the record's version ``[updatedAt in microseconds, eventId]``: last writer wins by
the event's own timestamp, ties broken by event id, so applying the same event twice, or
an older one late, changes nothing (idempotent under at-least-once delivery). Removed
channels and arrivals stay as tombstones so that a late older event cannot revive them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from stream_app.records import ExpectedArrival, StockChange

State = dict[str, Any]
Version = tuple[int, str]


@dataclass(frozen=True, slots=True)
class BufferPolicy:
    """Buffers for channels whose events carry none."""

    default: int = 0
    per_channel: Mapping[str, int] | None = None

    def for_channel(self, channel: str) -> int:
        if self.per_channel and channel in self.per_channel:
            return self.per_channel[channel]
        return self.default


class Aggregate(NamedTuple):
    """A key's totals (a named tuple: built for every key an apply touches, and a frozen
    dataclass's ``__init__`` costs several times a tuple's)."""

    total_on_hand: int
    total_reserved: int
    buffer: int
    atp: int


def empty_state() -> State:
    return {"channels": {}, "expected": {}}


def _version(entry: Mapping[str, Any]) -> Version:
    ts, event_id = entry["v"]
    return int(ts), str(event_id)


def stock_as_of(state: Mapping[str, Any] | None) -> datetime | None:
    """The moment of the newest channel record of a SKU/location (deletions included):
    the stock the channels reported reflects every order created before it."""
    newest = max(
        (int(entry["v"][0]) for entry in (state or {}).get("channels", {}).values()),
        default=None,
    )
    return None if newest is None else datetime.fromtimestamp(newest / 1e6, UTC)


def is_newer(incoming: Version, existing: Mapping[str, Any] | None) -> bool:
    """Last writer wins: ``incoming`` replaces ``existing`` only when strictly newer."""
    return existing is None or incoming > _version(existing)


def apply_stock(state: State, change: StockChange) -> bool:
    """Apply one channel record in place; True when the state changed."""
    channels: dict[str, Any] = state.setdefault("channels", {})
    version: Version = (change.updated_at_us, change.event_id)
    if not is_newer(version, channels.get(change.channel)):
        return False
    removed = change.deleted or (change.on_hand == 0 and change.reserved == 0)
    channels[change.channel] = {
        "onHand": 0 if removed else change.on_hand,
        "reserved": 0 if removed else change.reserved,
        "buffer": None if removed else change.buffer,
        "updatedAt": change.updated_at,
        "v": [version[0], version[1]],
        "deleted": removed,
    }
    return True


def apply_expected(state: State, arrival: ExpectedArrival) -> bool:
    """Apply one expected arrival (latest per ``ref`` wins; quantity 0 removes it)."""
    expected: dict[str, Any] = state.setdefault("expected", {})
    version: Version = (arrival.updated_at_us, arrival.event_id)
    if not is_newer(version, expected.get(arrival.ref)):
        return False
    expected[arrival.ref] = {
        "quantity": arrival.quantity,
        "expectedOn": arrival.expected_on,
        "updatedAt": arrival.updated_at,
        "v": [version[0], version[1]],
        "deleted": arrival.quantity == 0,
    }
    return True


def not_applied_reason(state: Mapping[str, Any], change: StockChange | ExpectedArrival) -> str:
    """Why ``change`` left ``state`` as it was: ``"duplicate"`` (the same version is
    there: a replay or a resend) or ``"stale"`` (a newer version is there)."""
    if isinstance(change, ExpectedArrival):
        existing = state.get("expected", {}).get(change.ref)
    else:
        existing = state.get("channels", {}).get(change.channel)
    same = existing is not None and _version(existing) == (change.updated_at_us, change.event_id)
    return "duplicate" if same else "stale"


def apply_change(state: State, change: StockChange | ExpectedArrival) -> bool:
    if isinstance(change, ExpectedArrival):
        return apply_expected(state, change)
    return apply_stock(state, change)


def aggregate(state: Mapping[str, Any], buffers: BufferPolicy, oversell_protection: bool) -> Aggregate:
    """Totals over live channels, the largest buffer, and ATP.

    ``atp = max(0, totalOnHand − totalReserved) − buffer``, floored at 0 when oversell
    protection is on; without it the raw difference is reported (it may be negative).
    """
    on_hand = reserved = 0
    buffer = 0
    for channel, rec in state.get("channels", {}).items():
        if rec.get("deleted"):
            continue
        on_hand += int(rec["onHand"])
        reserved += int(rec["reserved"])
        own = rec.get("buffer")
        buffer = max(buffer, int(own) if own is not None else buffers.for_channel(channel))
    if oversell_protection:
        atp = max(0, max(0, on_hand - reserved) - buffer)
    else:
        atp = on_hand - reserved - buffer
    return Aggregate(on_hand, reserved, buffer, atp)


def expected_arrivals(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Live expected arrivals, by date then ref."""
    live = [
        {"ref": ref, "quantity": int(rec["quantity"]), "expectedOn": rec["expectedOn"]}
        for ref, rec in state.get("expected", {}).items()
        if not rec.get("deleted")
    ]
    return sorted(live, key=lambda a: (a["expectedOn"], a["ref"]))


def channels_view(state: Mapping[str, Any], buffers: BufferPolicy) -> dict[str, dict[str, Any]]:
    """Live channels as shown to people (effective buffer filled in)."""
    out: dict[str, dict[str, Any]] = {}
    for channel, rec in sorted(state.get("channels", {}).items()):
        if rec.get("deleted"):
            continue
        own = rec.get("buffer")
        out[channel] = {
            "onHand": rec["onHand"],
            "reserved": rec["reserved"],
            "buffer": int(own) if own is not None else buffers.for_channel(channel),
            "updatedAt": rec["updatedAt"],
        }
    return out
