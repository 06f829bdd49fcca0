"""The console's pure parts: the campaign view of a book and the merge of worker statuses."""

from __future__ import annotations

from stream_app.domain.campaign import campaign_view
from stream_app.domain.future_atp import Supply
from stream_app.metrics import Metrics
from stream_app.web.console_views import merge_status
from tests.unit.test_reservation_book import NOW, POLICY, SHIP, SHIP2, new_book, req


def test_campaign_counts_by_tier_and_status_and_shows_the_bumped() -> None:
    book, supply = new_book(), Supply(2, (), 1.0)
    for order, tier in (("S1", "STANDARD"), ("S2", "STANDARD"), ("V1", "VIP"), ("S3", "STANDARD")):
        book.place(req(order, tier), supply, POLICY, NOW)
    book.place(req("L1", ship=SHIP2), supply, POLICY, NOW)
    view = campaign_view(book, supply, waitlist_enabled=True)
    first, later = view["shipDates"]
    assert first["shipDate"] == SHIP.isoformat() and later["shipDate"] == SHIP2.isoformat()
    assert first["overbookingLimit"] == 2 and first["heldUnits"] == 2 and first["depth"] == 4
    assert first["byTier"]["VIP"] == {"RESERVED": 1}
    assert first["byTier"]["STANDARD"] == {"RESERVED": 1, "WAITLISTED": 2, "BUMPED": 1}
    assert first["availableToPromise"] == 0 and later["byTier"] == {"STANDARD": {"WAITLISTED": 1}}
    assert view["currentInventory"] == 2


def test_worker_statuses_add_up() -> None:
    one, two = Metrics(), Metrics()
    one.note_dead_letter("app-pre-orders", "not JSON", 10.0)
    two.note_dead_letter("app-pre-orders", "bad shape", 20.0)
    two.note_dead_letter("app-inventory-changes", "bad numbers", 5.0)
    one.decisions.labels("RESERVED", "VIP").inc(3)
    two.decisions.labels("RESERVED", "VIP").inc()
    two.decisions.labels("WAITLISTED", "STANDARD").inc(2)
    one.decision_seconds.observe(0.004)
    two.decision_seconds.observe(0.2)
    one.pre_orders_shed.inc(5)
    two.pre_orders_shed.inc(2)
    workers = [{"url": "a", "lag": {"t": 3}, "deadLetters": one.dead_letter_view(),
                "decisions": one.decision_view()},
               {"url": "b", "lag": {"t": 4, "u": 1}, "deadLetters": two.dead_letter_view(),
                "decisions": two.decision_view()},
               {"url": "c", "unreachable": "TimeoutError"}]
    merged = merge_status(workers)
    assert merged["lag"] == {"t": 7, "u": 1}
    pre = merged["deadLetters"]["app-pre-orders"]
    assert pre["count"] == 2 and [d["reason"] for d in pre["latest"]] == ["bad shape", "not JSON"]
    assert merged["decisions"]["byOutcome"] == {"RESERVED": 4, "WAITLISTED": 2}
    assert merged["decisions"]["byTier"] == {"VIP": {"RESERVED": 4}, "STANDARD": {"WAITLISTED": 2}}
    assert merged["decisions"]["shed"] == 7
    latency = merged["decisions"]["latency"]
    assert latency["count"] == 2 and dict(latency["buckets"])["0.005"] == 1
    assert dict(latency["buckets"])["+Inf"] == 2 and len(merged["unreachable"]) == 1


def test_fluent_calls_are_counted_by_endpoint_without_ids() -> None:
    metrics = Metrics()
    metrics.note_fluent_call("POST", "/api/v4.1/job/123/batch", "200", 0.01)
    metrics.note_fluent_call("GET", "/api/v4.1/job/123/batch/9f8e", "200", 0.02)
    metrics.note_fluent_call("GET", "/api/v4.1/job/77/batch/1", "ClientConnectorError", 1.0)
    text = metrics.render().decode()
    assert 'endpoint="POST /api/v4.1/job/{id}/batch",status="200"} 1.0' in text
    assert 'endpoint="GET /api/v4.1/job/{id}/batch/{id}",status="200"} 1.0' in text
    assert 'status="ClientConnectorError"} 1.0' in text
