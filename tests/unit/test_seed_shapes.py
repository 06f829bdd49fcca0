"""The seed's webhook answers (SPEC section 7) built from the product's own answers."""

from __future__ import annotations

from datetime import UTC, datetime

from stream_app.web.seed_views import seed_atp_answer, seed_pre_order_answer


def test_pre_order_answers() -> None:
    decision = {"success": True, "orderId": "O1", "reservations": [{}], "waitlisted": [],
                "failedItems": [], "message": "1 of 1 item(s) reserved"}
    assert seed_pre_order_answer(200, decision) == decision
    invalid = seed_pre_order_answer(400, {"error": "invalid_pre_order", "message": "a; b",
                                          "reasons": ["a", "b"]})
    assert invalid == {"success": False, "error": "a; b", "reasons": ["a", "b"]}
    assert seed_pre_order_answer(400, invalid) == invalid  # idempotent (a forwarded answer)
    pending = seed_pre_order_answer(202, {"status": "pending", "orderId": "O2", "statusUrl": "/x"})
    assert pending["success"] is False and pending["pending"] is True and pending["statusUrl"] == "/x"


def test_check_atp_answer() -> None:
    atp = {"shipDate": "2030-02-01", "quantity": 3, "currentInventory": 2, "expectedArrival": 0,
           "totalExpected": 2, "existingReservations": 1, "overbookingLimit": 2,
           "availableToPromise": 1, "canFulfill": False, "recommendation": "WAITLIST"}
    now = datetime(2030, 1, 1, tzinfo=UTC)
    answer = seed_atp_answer("PS6", "DC1", atp, 0.0042, now)
    assert answer["recommendation"] == "Insufficient inventory (need 3, available 1)"
    assert answer["requestedQuantity"] == 3 and answer["locationRef"] == "DC1"
    assert answer["duration"] == 4.2 and answer["timestamp"] == "2030-01-01T00:00:00Z"
    ok = seed_atp_answer("PS6", "DC1", {**atp, "canFulfill": True, "quantity": 1}, 0, now)
    assert ok["recommendation"] == "Reservation can be fulfilled"
