"""Time and ids of reservations: ISO timestamps (aware datetimes only), expiry and
retention cut-offs, reservation ids and the SKU/location they name. Pure, no clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache


def require_aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now


@lru_cache(maxsize=4096)
def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a ``Z`` suffix (cached: one decision formats the same few
    moments — now, the commit deadline — for every reservation it touches)."""
    return require_aware(moment).astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def retention_cutoff(now: datetime, retention_days: int, exported_at: datetime | None) -> datetime:
    """Before when a finished reservation (or order result) may be pruned: older than the
    retention, and written by an export (``exported_at``: when the last complete export
    read the state; None when exports are off and retention alone decides)."""
    cutoff = now - timedelta(days=retention_days)
    return cutoff if exported_at is None else min(cutoff, exported_at)


@lru_cache(maxsize=4096)
def expires_at_for(ship_date: date, expiry_days: int) -> datetime:
    """``shipDate − expiry_days`` at 00:00 UTC: a commit must arrive before it."""
    return datetime.combine(ship_date - timedelta(days=expiry_days), time(0), tzinfo=UTC)


def reservation_id(
    order_id: str, sku: str, location: str, item_index: int, secret: bytes = b""
) -> str:
    """Deterministic, self-routing id: ``R-<key>-<hash>``.

    ``<key>`` is ``sku|location`` in URL-safe base64 without padding (so the id names the
    partition that owns it, see :func:`key_of_reservation_id`); ``<hash>`` is 16 hex
    digits of HMAC-SHA256 keyed with ``secret`` over the length-prefixed parts
    (unambiguous whatever they hold), so that nobody without the secret can derive the
    id of an order they know. With no secret: SHA-256, derivable (start-up warns).
    """
    material = (
        f"{len(order_id)}:{order_id}|{len(sku)}:{sku}|{len(location)}:{location}|{item_index}"
    ).encode()
    if secret:
        digest = hmac.new(secret, material, hashlib.sha256).hexdigest()[:16]
    else:
        digest = hashlib.sha256(material).hexdigest()[:16]
    return f"R-{encode_key(f'{sku}|{location}')}-{digest}"


@lru_cache(maxsize=65536)
def encode_key(key: str) -> str:
    """``sku|location`` as URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


_HEX = frozenset("0123456789abcdef")


def key_of_reservation_id(rid: str) -> str | None:
    """The ``sku|location`` a reservation id belongs to; None when the id is malformed."""
    if not isinstance(rid, str) or not rid.startswith("R-") or len(rid) > 1200:
        return None
    encoded, sep, digest = rid[2:].rpartition("-")
    if not sep or not encoded or len(digest) != 16 or not set(digest) <= _HEX:
        return None
    try:
        key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if encode_key(key) != encoded or key.count("|") != 1 or key.startswith("|") or key.endswith("|"):
        return None
    return key
