"""The pure parts of the REST poller: urls fit for logs, cursor urls, event ids, previews."""

from __future__ import annotations

from yarl import URL

from stream_app.connectors.rest import (
    PREVIEW_BYTES,
    _list_parent,
    cursor_url,
    derived_event_id,
    preview,
    safe_url,
)
from stream_app.records import MAX_TEXT


def test_safe_url_masks_query_values_and_user_info() -> None:
    url = "https://bob:pw@api.example.com/stock?api_key=s3cret&cursor=c9&x=1"
    assert safe_url(url) == "https://api.example.com/stock?api_key=***&cursor=***&x=***"
    assert (
        safe_url(url, keep="cursor") == "https://api.example.com/stock?api_key=***&cursor=c9&x=***"
    )
    assert safe_url("https://api.example.com/a") == "https://api.example.com/a"


def test_cursor_url_keeps_other_params_and_replaces_an_old_cursor() -> None:
    base = URL("https://api.example.com/stock?region=eu&cursor=old")
    got = cursor_url(base, "cursor", "a b&c")
    assert got.query["region"] == "eu" and got.query.getall("cursor") == ["a b&c"]
    assert cursor_url(URL("https://h/x"), "after", "5") == URL("https://h/x?after=5")


def test_derived_event_id_is_deterministic_normalised_and_bounded() -> None:
    record = {"sku": "A", "location": "S1", "updatedAt": "2026-03-01T10:00:00+00:00"}
    same_instant = {**record, "updatedAt": "2026-03-01T11:00:00+01:00"}
    assert derived_event_id("MKT", record) == "MKT:A|S1:2026-03-01T10:00:00Z"
    assert derived_event_id("MKT", same_instant) == derived_event_id("MKT", record)
    long = {**record, "sku": "S" * 250}
    event_id = derived_event_id("MKT", long)
    assert len(event_id) <= MAX_TEXT and event_id.startswith("MKT:sha256:")
    assert event_id == derived_event_id("MKT", dict(long))
    assert event_id != derived_event_id("MKT", {**long, "location": "S2"})


def test_preview_keeps_small_items_and_truncates_huge_ones() -> None:
    small = {"sku": "A", "qty": 1}
    assert preview(small) is small
    huge = {"blob": "x" * (PREVIEW_BYTES * 3)}
    text = preview(huge)
    assert isinstance(text, str) and text.endswith(f"(truncated, {PREVIEW_BYTES * 3 + 11} bytes)")
    assert len(text) < PREVIEW_BYTES + 100


def test_list_parent_only_for_paths_ending_in_a_wildcard() -> None:
    assert str(_list_parent("$.items[*]")) == "$.items"
    assert _list_parent("$[*]") is not None
    assert _list_parent("$.items") is None
