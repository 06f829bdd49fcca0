"""Reservation exports and release reports written to a real moto S3 server over HTTP."""

from __future__ import annotations

import dataclasses
import socket
from datetime import UTC, datetime
from typing import Any

import aioboto3
import orjson
import pytest
from pydantic import SecretStr

from stream_app.exports import (
    ExportError,
    S3Config,
    export_release_report,
    export_reservations,
    write_json,
)

GENERATED = datetime(2025, 3, 1, 3, 0, 5, tzinfo=UTC)
SECRET = "sup3r-s3cret-KEY-do-not-print"
KEY_ID = "AKIAEXPORTTEST0001"


def res(rid: str, ship: str, status: str, tier: str, quantity: int) -> dict[str, Any]:
    return {
        "reservationId": rid,
        "orderId": f"O-{rid}",
        "customerId": f"C-{rid}",
        "sku": "PS6",
        "location": "DC1",
        "shipDate": ship,
        "quantity": quantity,
        "tier": tier,
        "status": status,
        "sequence": int(rid[1:]),
        "queuePosition": int(rid[1:]),
        "expiresAt": "2025-03-25",
    }


async def get_object(cfg: S3Config, key: str) -> tuple[Any, str]:
    session = aioboto3.Session(
        aws_access_key_id=cfg.access_key_id.get_secret_value(),
        aws_secret_access_key=cfg.secret_access_key.get_secret_value(),
        region_name=cfg.region,
    )
    async with session.client("s3", endpoint_url=cfg.endpoint_url) as client:
        obj = await client.get_object(Bucket=cfg.bucket, Key=key)
        async with obj["Body"] as stream:
            body = await stream.read()
        return orjson.loads(body), obj["ContentType"]


async def list_keys(cfg: S3Config) -> list[str]:
    session = aioboto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=cfg.region
    )
    async with session.client("s3", endpoint_url=cfg.endpoint_url) as client:
        listing = await client.list_objects_v2(Bucket=cfg.bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))


async def test_export_reservations_writes_one_object_per_ship_date_plus_latest(
    s3_config: S3Config,
) -> None:
    reservations = [
        res("r1", "2025-04-01", "RESERVED", "VIP", 1),
        res("r2", "2025-04-01", "WAITLISTED", "STANDARD", 2),
        res("r3", "2025-04-01", "RESERVED", "STANDARD", 1),
        res("r4", "2025-05-15", "COMMITTED", "PLATINUM", 3),
    ]
    uris = await export_reservations(s3_config, reservations, generated_at=GENERATED)

    bucket = s3_config.bucket
    expected_keys = [
        "stream-app/reservations/2025-04-01/20250301T030005Z.json",
        "stream-app/reservations/2025-04-01/latest.json",
        "stream-app/reservations/2025-05-15/20250301T030005Z.json",
        "stream-app/reservations/2025-05-15/latest.json",
    ]
    assert uris == [f"s3://{bucket}/{k}" for k in expected_keys]
    assert await list_keys(s3_config) == sorted(expected_keys)

    doc, content_type = await get_object(s3_config, expected_keys[0])
    assert content_type == "application/json"
    assert doc["shipDate"] == "2025-04-01"
    assert doc["generatedAt"] == "2025-03-01T03:00:05Z"
    assert doc["summary"]["total"] == {"count": 3, "units": 4}
    assert doc["summary"]["byStatusTier"]["RESERVED"] == {
        "STANDARD": {"count": 1, "units": 1},
        "VIP": {"count": 1, "units": 1},
    }
    assert [r["reservationId"] for r in doc["byStatus"]["RESERVED"]] == ["r1", "r3"]
    assert doc["byStatus"]["WAITLISTED"] == [reservations[1]]

    latest, _ = await get_object(s3_config, expected_keys[1])
    assert latest == doc

    other, _ = await get_object(s3_config, expected_keys[3])
    assert other["byStatus"] == {"COMMITTED": [reservations[3]]}


async def test_a_later_export_replaces_latest_and_keeps_history(
    s3_config: S3Config,
) -> None:
    await export_reservations(
        s3_config, [res("r1", "2025-04-01", "RESERVED", "VIP", 1)], generated_at=GENERATED
    )
    later = datetime(2025, 3, 2, 3, 0, 0, tzinfo=UTC)
    await export_reservations(
        s3_config, [res("r1", "2025-04-01", "CONFIRMED", "VIP", 1)], generated_at=later
    )
    assert await list_keys(s3_config) == [
        "stream-app/reservations/2025-04-01/20250301T030005Z.json",
        "stream-app/reservations/2025-04-01/20250302T030000Z.json",
        "stream-app/reservations/2025-04-01/latest.json",
    ]
    latest, _ = await get_object(s3_config, "stream-app/reservations/2025-04-01/latest.json")
    assert list(latest["byStatus"]) == ["CONFIRMED"]
    assert latest["generatedAt"] == "2025-03-02T03:00:00Z"


async def test_export_without_reservations_writes_nothing(
    s3_config: S3Config,
) -> None:
    assert await export_reservations(s3_config, [], generated_at=GENERATED) == []
    assert await list_keys(s3_config) == []


async def test_release_report_is_written_under_date_and_run_id(
    s3_config: S3Config,
) -> None:
    report = {
        "runId": "run-20250401-0200",
        "releaseDate": "2025-04-01",
        "startedAt": "2025-04-01T02:00:00Z",
        "durationSeconds": 1.25,
        "counts": {"VIP": {"CONFIRMED": 3, "CANCELLED": 1}},
    }
    uri = await export_release_report(s3_config, report)
    key = "stream-app/releases/2025-04-01/run-20250401-0200.json"
    assert uri == f"s3://{s3_config.bucket}/{key}"
    doc, content_type = await get_object(s3_config, key)
    assert content_type == "application/json"
    assert doc == report


async def test_write_json_uses_key_as_given(s3_config: S3Config) -> None:
    uri = await write_json(s3_config, "misc/x.json", {"a": [1, 2], "when": GENERATED})
    assert uri == f"s3://{s3_config.bucket}/misc/x.json"
    doc, _ = await get_object(s3_config, "misc/x.json")
    assert doc == {"a": [1, 2], "when": "2025-03-01T03:00:05+00:00"}


@pytest.mark.parametrize("missing", ["runId", "releaseDate"])
async def test_release_report_needs_date_and_run_id(
    s3_config: S3Config,
    missing: str,
) -> None:
    report = {"runId": "r1", "releaseDate": "2025-04-01"}
    del report[missing]
    with pytest.raises(ExportError, match=missing):
        await export_release_report(s3_config, report)


async def test_release_report_rejects_path_tricks(s3_config: S3Config) -> None:
    with pytest.raises(ExportError, match="runId"):
        await export_release_report(s3_config, {"runId": "../x", "releaseDate": "2025-04-01"})


def with_secret(cfg: S3Config, **changes: Any) -> S3Config:
    return dataclasses.replace(
        cfg,
        access_key_id=SecretStr(KEY_ID),
        secret_access_key=SecretStr(SECRET),
        max_attempts=1,
        connect_timeout=2.0,
        **changes,
    )


def assert_no_credentials(exc: ExportError) -> None:
    text = f"{exc} {exc!r} {exc.args!r}"
    assert SECRET not in text
    assert KEY_ID not in text


async def test_missing_bucket_raises_export_error_without_secret(
    s3_config: S3Config,
) -> None:
    cfg = with_secret(s3_config, bucket=f"{s3_config.bucket}-missing")
    with pytest.raises(ExportError) as info:
        await export_reservations(
            cfg, [res("r1", "2025-04-01", "RESERVED", "VIP", 1)], generated_at=GENERATED
        )
    assert "NoSuchBucket" in str(info.value)
    assert cfg.bucket in str(info.value)
    assert info.value.__cause__ is None
    assert_no_credentials(info.value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_bad_endpoint_raises_export_error_without_secret(
    s3_config: S3Config,
) -> None:
    cfg = with_secret(s3_config, endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ExportError) as info:
        await export_release_report(cfg, {"runId": "r1", "releaseDate": "2025-04-01"})
    assert "put_object" in str(info.value)
    assert_no_credentials(info.value)


async def test_malformed_endpoint_raises_export_error_without_secret(
    s3_config: S3Config,
) -> None:
    cfg = with_secret(s3_config, endpoint_url="not a url")
    with pytest.raises(ExportError) as info:
        await write_json(cfg, "k.json", {})
    assert "endpoint" in str(info.value)
    assert_no_credentials(info.value)


async def test_disabled_config_raises_export_error() -> None:
    cfg = S3Config("", "us-east-1", "", "p/", SecretStr(KEY_ID), SecretStr(SECRET))
    assert not cfg.enabled
    with pytest.raises(ExportError, match="no bucket configured") as info:
        await write_json(cfg, "k.json", {})
    assert_no_credentials(info.value)


async def test_unserialisable_payload_raises_export_error(
    s3_config: S3Config,
) -> None:
    with pytest.raises(ExportError, match="serialise"):
        await write_json(s3_config, "k.json", {"x": object()})


async def test_successful_export_logs_uri_but_never_credentials(
    s3_config: S3Config,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = with_secret(s3_config)  # moto accepts any credentials
    with caplog.at_level("DEBUG", logger="stream_app.exports"):
        uri = await write_json(cfg, "logged.json", {"ok": True})
    own = [r.getMessage() for r in caplog.records if r.name == "stream_app.exports"]
    assert any(uri in message for message in own)
    assert not any(SECRET in m or KEY_ID in m for m in own)
