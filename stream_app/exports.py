"""Nightly export of reservation state and release reports to S3 as JSON (SPEC §5).

Two layers:

* pure functions that shape the data (:func:`summarize_reservations`, :func:`build_export`);
* async writers on top of aioboto3 (:func:`write_json`, :func:`export_reservations`,
  :func:`export_release_report`).

Object layout under the configured prefix (``stream-app/`` by default)::

    {prefix}reservations/{shipDate}/{generatedAt:%Y%m%dT%H%M%SZ}.json
    {prefix}reservations/{shipDate}/latest.json
    {prefix}releases/{releaseDate}/{runId}.json

Every S3 failure raises :class:`ExportError`; its message names the bucket/key and the
underlying error but never the credentials, which are kept as ``SecretStr`` and never logged.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import aioboto3
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

if TYPE_CHECKING:
    from stream_app.settings import Settings

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
UNKNOWN = "UNKNOWN"
_KEY_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=@-]*$")
_REDACTED = "***"


class ExportError(Exception):
    """An export could not be written; the message never contains credentials."""


@dataclass(frozen=True)
class S3Config:
    """Where exports go. ``repr`` shows the secrets masked (``SecretStr``)."""

    endpoint_url: str
    region: str
    bucket: str
    prefix: str
    access_key_id: SecretStr
    secret_access_key: SecretStr
    max_attempts: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Config:
        return cls(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
        )

    @property
    def enabled(self) -> bool:
        """Exports are on only when a bucket is configured."""
        return bool(self.bucket.strip())

    @property
    def key_prefix(self) -> str:
        """The prefix normalised to ``""`` or ``"something/"`` (no leading slash)."""
        prefix = self.prefix.strip().lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return prefix

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


# --- pure shaping ---------------------------------------------------------------------------


def _quantity(reservation: Mapping[str, Any]) -> int:
    value = reservation.get("quantity", 0)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    rid = reservation.get("reservationId", "?")
    raise ValueError(f"reservation {rid}: quantity {value!r} is not an integer")


def _label(reservation: Mapping[str, Any], field: str) -> str:
    value = reservation.get(field)
    if value is None or value == "":
        return UNKNOWN
    return str(value)


def _ship_date(reservation: Mapping[str, Any]) -> str:
    """The ship date as ``YYYY-MM-DD``; it becomes an S3 key segment, so it is validated."""
    value = reservation.get("shipDate")
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value).date().isoformat()
        except ValueError:
            pass
    rid = reservation.get("reservationId", "?")
    raise ValueError(f"reservation {rid}: shipDate {value!r} is not an ISO date")


def _counter() -> dict[str, int]:
    return {"count": 0, "units": 0}


def summarize_reservations(reservations: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and units in total, by status, by tier and by status × tier.

    Shape::

        {"total": {"count", "units"},
         "byStatus": {status: {"count", "units"}},
         "byTier": {tier: {"count", "units"}},
         "byStatusTier": {status: {tier: {"count", "units"}}}}

    Keys are sorted; a missing status or tier counts as ``"UNKNOWN"``.
    """
    total = _counter()
    by_status: dict[str, dict[str, int]] = defaultdict(_counter)
    by_tier: dict[str, dict[str, int]] = defaultdict(_counter)
    by_status_tier: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(_counter)
    )
    for reservation in reservations:
        units = _quantity(reservation)
        status = _label(reservation, "status")
        tier = _label(reservation, "tier")
        for bucket in (total, by_status[status], by_tier[tier], by_status_tier[status][tier]):
            bucket["count"] += 1
            bucket["units"] += units
    return {
        "total": total,
        "byStatus": {k: dict(by_status[k]) for k in sorted(by_status)},
        "byTier": {k: dict(by_tier[k]) for k in sorted(by_tier)},
        "byStatusTier": {
            s: {t: dict(by_status_tier[s][t]) for t in sorted(by_status_tier[s])}
            for s in sorted(by_status_tier)
        },
    }


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("generated_at must be timezone-aware")
    return moment.astimezone(UTC)


def _iso_utc(moment: datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")


def _sort_key(reservation: Mapping[str, Any]) -> tuple[str, str, int, str]:
    sequence = reservation.get("sequence")
    seq = sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else 2**62
    return (
        str(reservation.get("sku", "")),
        str(reservation.get("location", "")),
        seq,
        str(reservation.get("reservationId", "")),
    )


def build_export(
    reservations: Iterable[Mapping[str, Any]], *, generated_at: datetime
) -> dict[str, dict[str, Any]]:
    """Group reservations per ship date, then per status.

    Returns ``{shipDate: {"shipDate", "generatedAt", "summary", "byStatus"}}`` with ship dates
    and statuses sorted and, inside a status, reservations sorted by sku, location,
    sequence and id, so the same state always exports the same bytes. Reservations are
    copied, never mutated. ``generated_at`` must be timezone-aware (rendered in UTC).
    """
    generated = _iso_utc(generated_at)
    per_date: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for reservation in reservations:
        per_date[_ship_date(reservation)].append(dict(reservation))

    out: dict[str, dict[str, Any]] = {}
    for ship_date in sorted(per_date):
        items = per_date[ship_date]
        by_status: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for item in items:
            by_status[_label(item, "status")].append(item)
        out[ship_date] = {
            "shipDate": ship_date,
            "generatedAt": generated,
            "summary": summarize_reservations(items),
            "byStatus": {s: sorted(by_status[s], key=_sort_key) for s in sorted(by_status)},
        }
    return out


# --- S3 writers -----------------------------------------------------------------------------


def _redact(text: str, cfg: S3Config) -> str:
    for secret in (cfg.secret_access_key.get_secret_value(), cfg.access_key_id.get_secret_value()):
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


def describe_s3_error(exc: BaseException, cfg: S3Config) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "ClientError")
        message = err.get("Message", "")
        detail = f"{code}: {message}" if message else str(code)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return _redact(detail, cfg)


@asynccontextmanager
async def s3_client(cfg: S3Config) -> AsyncIterator[Any]:
    if not cfg.enabled:
        raise ExportError("S3 export is disabled: no bucket configured (STREAM_APP_S3_BUCKET)")
    access_key = cfg.access_key_id.get_secret_value() or None
    secret_key = cfg.secret_access_key.get_secret_value() or None
    session = aioboto3.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=cfg.region or None,
    )
    config = Config(
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        retries={"max_attempts": max(1, cfg.max_attempts), "mode": "standard"},
        s3={"addressing_style": "path"} if cfg.endpoint_url else None,
    )
    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(
                session.client("s3", endpoint_url=cfg.endpoint_url or None, config=config)
            )
        except (BotoCoreError, ClientError, ValueError) as exc:
            raise ExportError(
                f"cannot open S3 client for bucket {cfg.bucket!r} "
                f"(endpoint {cfg.endpoint_url or 'AWS default'}): {describe_s3_error(exc, cfg)}"
            ) from None
        yield client


def _encode(key: str, payload: Any) -> bytes:
    try:
        return orjson.dumps(payload)
    except TypeError as exc:
        raise ExportError(f"cannot serialise export {key!r} as JSON: {exc}") from None


async def _put(client: Any, cfg: S3Config, key: str, body: bytes) -> str:
    uri = cfg.uri(key)
    try:
        await client.put_object(
            Bucket=cfg.bucket, Key=key, Body=body, ContentType=JSON_CONTENT_TYPE
        )
    except (BotoCoreError, ClientError) as exc:
        raise ExportError(f"S3 put_object to {uri} failed: {describe_s3_error(exc, cfg)}") from None
    log.info("exported %s (%d bytes)", uri, len(body))
    return uri


async def write_json(cfg: S3Config, key: str, payload: Any) -> str:
    """Write ``payload`` as JSON to ``key`` (used as given) and return its ``s3://`` URI."""
    body = _encode(key, payload)
    async with s3_client(cfg) as client:
        return await _put(client, cfg, key, body)


async def export_reservations(
    cfg: S3Config, reservations: Iterable[Mapping[str, Any]], *, generated_at: datetime
) -> list[str]:
    """Write one object per ship date plus its ``latest.json``; return the URIs written.

    For each ship date (sorted) the list holds the timestamped object then ``latest.json``.
    No reservations means no objects and an empty list.
    """
    try:
        stamp = _utc(generated_at).strftime(_KEY_TIMESTAMP)
        export = build_export(reservations, generated_at=generated_at)
    except ValueError as exc:
        raise ExportError(f"cannot build reservation export: {exc}") from None
    if not export:
        return []
    base = f"{cfg.key_prefix}reservations/"
    uris: list[str] = []
    async with s3_client(cfg) as client:
        for ship_date, document in export.items():
            body = _encode(ship_date, document)
            uris.append(await _put(client, cfg, f"{base}{ship_date}/{stamp}.json", body))
            uris.append(await _put(client, cfg, f"{base}{ship_date}/latest.json", body))
    return uris


def _segment(report: Mapping[str, Any], field: str) -> str:
    value = report.get(field)
    if isinstance(value, datetime):
        value = value.date().isoformat()
    elif isinstance(value, date):
        value = value.isoformat()
    text = "" if value is None else str(value)
    if not _SAFE_SEGMENT.match(text) or ".." in text:
        raise ExportError(f"release report needs a usable {field!r} for the S3 key, got {value!r}")
    return text


async def export_release_report(cfg: S3Config, report: Mapping[str, Any]) -> str:
    """Write a release report to ``{prefix}releases/{releaseDate}/{runId}.json``."""
    release_date = _segment(report, "releaseDate")
    run_id = _segment(report, "runId")
    key = f"{cfg.key_prefix}releases/{release_date}/{run_id}.json"
    return await write_json(cfg, key, dict(report))
