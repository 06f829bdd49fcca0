"""Pure shaping of the reservation export: summaries and grouping (no S3)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import SecretStr

from stream_app.exports import S3Config, build_export, summarize_reservations
from stream_app.settings import load_settings

GENERATED = datetime(2025, 3, 1, 3, 0, 5, tzinfo=UTC)


def res(
    rid: str,
    *,
    status: str = "RESERVED",
    tier: str = "STANDARD",
    quantity: int = 1,
    ship: str = "2025-04-01",
    sku: str = "SKU-1",
    location: str = "LOC-1",
    sequence: int = 0,
) -> dict[str, Any]:
    return {
        "reservationId": rid,
        "orderId": f"O-{rid}",
        "sku": sku,
        "location": location,
        "shipDate": ship,
        "quantity": quantity,
        "tier": tier,
        "status": status,
        "sequence": sequence,
    }


def test_summarize_empty() -> None:
    assert summarize_reservations([]) == {
        "total": {"count": 0, "units": 0},
        "byStatus": {},
        "byTier": {},
        "byStatusTier": {},
    }


def test_summarize_counts_and_units_by_status_tier_and_both() -> None:
    items = [
        res("a", status="RESERVED", tier="VIP", quantity=2),
        res("b", status="RESERVED", tier="STANDARD", quantity=1),
        res("c", status="WAITLISTED", tier="STANDARD", quantity=3),
        res("d", status="RESERVED", tier="VIP", quantity=5),
        res("e", status="CONFIRMED", tier="PLATINUM", quantity=1),
    ]
    summary = summarize_reservations(items)
    assert summary["total"] == {"count": 5, "units": 12}
    assert summary["byStatus"] == {
        "CONFIRMED": {"count": 1, "units": 1},
        "RESERVED": {"count": 3, "units": 8},
        "WAITLISTED": {"count": 1, "units": 3},
    }
    assert summary["byTier"] == {
        "PLATINUM": {"count": 1, "units": 1},
        "STANDARD": {"count": 2, "units": 4},
        "VIP": {"count": 2, "units": 7},
    }
    assert summary["byStatusTier"] == {
        "CONFIRMED": {"PLATINUM": {"count": 1, "units": 1}},
        "RESERVED": {"STANDARD": {"count": 1, "units": 1}, "VIP": {"count": 2, "units": 7}},
        "WAITLISTED": {"STANDARD": {"count": 1, "units": 3}},
    }
    # sorted keys, so the JSON is stable
    assert list(summary["byStatus"]) == sorted(summary["byStatus"])


def test_summarize_accepts_a_generator_and_unknown_labels() -> None:
    items = ({"reservationId": str(i), "quantity": 2} for i in range(3))
    summary = summarize_reservations(items)
    assert summary["total"] == {"count": 3, "units": 6}
    assert summary["byStatus"] == {"UNKNOWN": {"count": 3, "units": 6}}
    assert summary["byTier"] == {"UNKNOWN": {"count": 3, "units": 6}}


@pytest.mark.parametrize("bad", ["two", None, 1.5, True, [1]])
def test_summarize_rejects_non_integer_quantity(bad: object) -> None:
    item = res("x")
    item["quantity"] = bad
    with pytest.raises(ValueError, match="reservation x: quantity"):
        summarize_reservations([item])


def test_build_export_groups_per_ship_date_and_status() -> None:
    items = [
        res("a", ship="2025-04-02", status="RESERVED", tier="VIP", quantity=2),
        res("b", ship="2025-04-01", status="WAITLISTED", quantity=1),
        res("c", ship="2025-04-01", status="RESERVED", quantity=4, sequence=2),
        res("d", ship="2025-04-01", status="RESERVED", quantity=1, sequence=1),
    ]
    export = build_export(items, generated_at=GENERATED)
    assert list(export) == ["2025-04-01", "2025-04-02"]

    first = export["2025-04-01"]
    assert set(first) == {"shipDate", "generatedAt", "summary", "byStatus"}
    assert first["shipDate"] == "2025-04-01"
    assert first["generatedAt"] == "2025-03-01T03:00:05Z"
    assert list(first["byStatus"]) == ["RESERVED", "WAITLISTED"]
    # within a status: sku, location, then arrival sequence
    assert [r["reservationId"] for r in first["byStatus"]["RESERVED"]] == ["d", "c"]
    assert [r["reservationId"] for r in first["byStatus"]["WAITLISTED"]] == ["b"]
    assert first["summary"]["total"] == {"count": 3, "units": 6}
    assert first["summary"]["byStatus"]["RESERVED"] == {"count": 2, "units": 5}

    second = export["2025-04-02"]
    assert second["summary"]["byTier"] == {"VIP": {"count": 1, "units": 2}}
    assert second["byStatus"]["RESERVED"][0] == items[0]


def test_build_export_does_not_mutate_or_alias_input() -> None:
    items = [res("a")]
    export = build_export(items, generated_at=GENERATED)
    exported = export["2025-04-01"]["byStatus"]["RESERVED"][0]
    exported["status"] = "CHANGED"
    assert items[0]["status"] == "RESERVED"


def test_build_export_normalises_ship_dates_and_generated_at_to_utc() -> None:
    items = [
        {**res("a"), "shipDate": date(2025, 4, 1)},
        {**res("b"), "shipDate": "2025-04-01T00:00:00+00:00"},
    ]
    paris = timezone(timedelta(hours=1))
    export = build_export(items, generated_at=datetime(2025, 3, 1, 4, 0, 5, tzinfo=paris))
    assert list(export) == ["2025-04-01"]
    assert export["2025-04-01"]["generatedAt"] == "2025-03-01T03:00:05Z"
    assert export["2025-04-01"]["summary"]["total"]["count"] == 2


def test_build_export_empty() -> None:
    assert build_export([], generated_at=GENERATED) == {}


def test_build_export_requires_aware_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_export([res("a")], generated_at=datetime(2025, 3, 1))  # noqa: DTZ001


@pytest.mark.parametrize("bad", ["", "tomorrow", "../../etc", None, 20250401])
def test_build_export_rejects_bad_ship_date(bad: object) -> None:
    item = res("x")
    item["shipDate"] = bad
    with pytest.raises(ValueError, match="reservation x: shipDate"):
        build_export([item], generated_at=GENERATED)


def test_s3_config_from_settings_and_enabled() -> None:
    settings = load_settings(
        s3_endpoint_url="http://127.0.0.1:9000",
        s3_region="eu-west-1",
        s3_bucket="exports",
        s3_prefix="stream-app/",
        aws_access_key_id=SecretStr("AKIDEXAMPLE"),
        aws_secret_access_key=SecretStr("very-secret-value"),
    )
    cfg = S3Config.from_settings(settings)
    assert cfg.enabled
    assert cfg.endpoint_url == "http://127.0.0.1:9000"
    assert cfg.region == "eu-west-1"
    assert cfg.bucket == "exports"
    assert cfg.access_key_id.get_secret_value() == "AKIDEXAMPLE"
    assert "very-secret-value" not in repr(cfg)
    assert "AKIDEXAMPLE" not in repr(cfg)

    disabled = S3Config.from_settings(load_settings(s3_bucket=""))
    assert not disabled.enabled


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("stream-app/", "stream-app/"), ("stream-app", "stream-app/"), ("", ""), ("/a/b", "a/b/")],
)
def test_key_prefix_normalised(prefix: str, expected: str) -> None:
    cfg = S3Config("", "us-east-1", "b", prefix, SecretStr(""), SecretStr(""))
    assert cfg.key_prefix == expected
