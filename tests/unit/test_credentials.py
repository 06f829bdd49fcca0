"""Who may call what (stream_app.credentials), keyed reservation ids, the manual release
window and the JSON error answers of the web layer."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.credentials import (
    FORWARDED_HEADER,
    LOCAL_ONLY_HEADER,
    Credentials,
    open_doors,
    redact_customers,
)
from stream_app.domain.ids import key_of_reservation_id, reservation_id
from stream_app.settings import load_settings
from stream_app.web.release_views import checked_release_date, merge_previews


def credentials(**env: str) -> Credentials:
    return Credentials.from_settings(load_settings(_env_file=None, **env))


def test_service_and_admin_keys_are_distinct() -> None:
    c = credentials(service_api_key="svc", admin_api_key="adm")
    assert c.is_service({"X-API-Key": "svc"}) and c.is_service({"X-API-Key": "adm"})
    assert c.is_admin({"X-API-Key": "adm"}) and not c.is_admin({"X-API-Key": "svc"})
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "sv"}, {"X-API-Key": "svc "}):
        assert not c.is_service(headers) and not c.is_admin(headers)


def test_no_key_configured_refuses_everyone() -> None:
    c = credentials(service_api_key="", admin_api_key="")
    assert not c.is_service({"X-API-Key": ""}) and not c.is_admin({"X-API-Key": ""})
    warnings = " ".join(open_doors(load_settings(_env_file=None, service_api_key="")))
    assert "STREAM_APP_SERVICE_API_KEY" in warnings and "STREAM_APP_RESERVATION_ID_SECRET" in warnings
    assert open_doors(load_settings(_env_file=None, service_api_key="k",
                                    reservation_id_secret="s")) == []


def test_forwarding_token_is_shared_by_the_app_and_a_client_header_is_not_trusted() -> None:
    one = credentials(app_id="shop", service_api_key="svc")
    assert one == credentials(app_id="shop", service_api_key="svc")  # every worker agrees
    assert one.cluster_token != credentials(app_id="other", service_api_key="svc").cluster_token
    assert one.cluster_token != credentials(app_id="shop", cluster_secret="x").cluster_token
    assert not one.is_forwarded({FORWARDED_HEADER: "1"})
    sent = one.forwarding_headers({"X-API-Key": "svc", "Host": "a:1", "Content-Length": "3",
                                   FORWARDED_HEADER: "1"})
    assert one.is_forwarded(sent) and sent["X-API-Key"] == "svc"
    assert "Host" not in sent and "Content-Length" not in sent
    local = one.forwarding_headers({}, LOCAL_ONLY_HEADER)
    assert one.is_forwarded(local, LOCAL_ONLY_HEADER) and not one.is_forwarded(local)
    assert "svc" not in repr(one) and one.cluster_token not in repr(one)


def test_customer_data_is_redacted_at_any_depth() -> None:
    body = {"orderId": "O1", "customerId": "c1", "entries": [
        {"customerEmail": "a@b", "sku": "S", "nested": {"customerId": "c2", "x": 1}}]}
    assert redact_customers(body) == {"orderId": "O1", "entries": [{"sku": "S", "nested": {"x": 1}}]}


@given(st.text(min_size=1, max_size=20), st.integers(0, 50), st.binary(min_size=1, max_size=32))
def test_keyed_ids_route_like_unkeyed_ones_and_need_the_secret(
    order_id: str, index: int, secret: bytes
) -> None:
    keyed = reservation_id(order_id, "PS6", "DC1", index, secret)
    assert keyed == reservation_id(order_id, "PS6", "DC1", index, secret)  # stable
    assert keyed != reservation_id(order_id, "PS6", "DC1", index)  # not derivable without it
    assert keyed != reservation_id(order_id, "PS6", "DC1", index, secret + b"x")
    assert key_of_reservation_id(keyed) == "PS6|DC1"


@pytest.mark.parametrize(
    ("text", "ok"),
    [("2026-12-04", True), ("2026-11-20", True), ("2026-12-18", True), ("2026-11-19", False),
     ("2026-12-19", False), ("9999-12-31", False), ("tomorrow", False), (None, False)],
)
def test_manual_release_dates_stay_in_the_window(text: str | None, ok: bool) -> None:
    release_date, reasons = checked_release_date(text, date(2026, 12, 4), 14)
    assert (release_date is not None and not reasons) is ok
    if not ok:
        assert reasons and ("window" in reasons[0] or "required" in reasons[0])


def test_release_previews_add_up_by_tier_and_outcome() -> None:
    merged = merge_previews([
        {"byTier": {"VIP": {"ordered": 2, "units_ordered": 3}}, "keys": 1},
        {"byTier": {"VIP": {"ordered": 1, "units_ordered": 1},
                    "STANDARD": {"cancelled_not_allocated": 4}}, "keys": 2},
        {"url": "http://w3", "unreachable": "TimeoutError"},
    ])
    assert merged["byTier"] == {"VIP": {"ordered": 3, "units_ordered": 4},
                                "STANDARD": {"cancelled_not_allocated": 4}}
    assert merged["totals"] == {"ordered": 3, "units_ordered": 4, "cancelled_not_allocated": 4}
    assert merged["keys"] == 3 and len(merged["unreachableWorkers"]) == 1
