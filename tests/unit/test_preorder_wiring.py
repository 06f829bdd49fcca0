"""Pure parts of the pre-order wiring: self-routing ids, message parsing, order collection,
the waiting-request registry."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.preorders import BadMessage, collect, parse_command, parse_pre_order_message
from agents.result_waiters import ResultWaiters
from stream_app.domain.ids import key_of_reservation_id, reservation_id
from stream_app.domain.preorders import Policy, PreOrder

TODAY = date(2030, 1, 1)
part = st.text(min_size=1, max_size=30).filter(lambda s: "|" not in s)


@given(order=st.text(max_size=30), sku=part, location=part, index=st.integers(0, 500))
def test_reservation_ids_name_their_sku_and_location(order: str, sku: str, location: str, index: int) -> None:
    rid = reservation_id(order, sku, location, index)
    assert key_of_reservation_id(rid) == f"{sku}|{location}"
    assert rid == reservation_id(order, sku, location, index)
    assert "/" not in rid and "?" not in rid and "|" not in rid


@pytest.mark.parametrize(
    "rid",
    ["", "R-", "R-abc", "X-UFM2fERDMQ-0123456789abcdef", "R-UFM2fERDMQ-0123456789abcdeg",
     "R-UFM2fERDMQ-0123", "R-!!!-0123456789abcdef", "R-UFM2-0123456789abcdef",
     "R-UFM2fERDMQ==-0123456789abcdef"],
)
def test_malformed_reservation_ids_have_no_key(rid: str) -> None:
    assert key_of_reservation_id(rid) is None


def test_a_valid_id_shape_still_checks_the_key() -> None:
    rid = reservation_id("O1", "PS6", "DC1", 0)
    assert key_of_reservation_id(rid) == "PS6|DC1"
    assert key_of_reservation_id(rid.replace("R-", "R-A", 1)) is None  # key no longer decodes


def message(**overrides: Any) -> bytes:
    body = {
        "orderId": "O1", "customerId": "C1", "customerEmail": "a@b.c", "customerTier": "VIP",
        "shipDate": "2030-02-01", "items": [{"sku": "PS6", "quantity": 1, "locationRef": "DC1"}],
    }
    body.update(overrides)
    return orjson.dumps(body)


def test_pre_order_messages_valid_invalid_and_dead() -> None:
    parsed = parse_pre_order_message(message(), Policy(), TODAY, 10_000)
    assert isinstance(parsed, PreOrder) and parsed.order_id == "O1"
    invalid = parse_pre_order_message(message(shipDate="2030-01-02", items=[]), Policy(), TODAY, 10_000)
    assert isinstance(invalid, dict) and invalid["success"] is False and invalid["orderId"] == "O1"
    assert len(invalid["failedItems"]) == 2
    for raw, reason in ((b"", "empty"), (b"{", "not JSON"), (b"[]", "not a JSON object"),
                        (message(pad="x" * 200), "exceeds")):
        with pytest.raises(BadMessage, match=reason):
            parse_pre_order_message(raw, Policy(), TODAY, 150)


def test_commands_are_checked() -> None:
    rid = reservation_id("O1", "PS6", "DC1", 0)
    assert parse_command(orjson.dumps({"command": "Cancel", "reservationId": rid})) == {
        "command": "cancel", "reservationId": rid}
    assert parse_command(orjson.dumps({"command": "commit", "orderId": 42, "requestId": "r"})) == {
        "command": "commit", "orderId": "42", "requestId": "r"}
    for bad, reason in (({"command": "delete", "orderId": "O"}, "cancel"),
                        ({"command": "cancel"}, "required"),
                        ({"command": "cancel", "orderId": " "}, "required"),
                        ({"command": "cancel", "reservationId": "R-x"}, "not a reservation id")):
        with pytest.raises(BadMessage, match=reason):
            parse_command(orjson.dumps(bad))


class Orders:
    """A dict standing in for the order_results table."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def get(self, order_id: str) -> dict[str, Any] | None:
        return orjson.loads(orjson.dumps(self.data[order_id])) if order_id in self.data else None

    def put(self, order_id: str, entry: dict[str, Any]) -> None:
        self.data[order_id] = entry


def decision(index: int, count: int, submission: str, status: str = "RESERVED",
             published: bool = False) -> dict[str, Any]:
    return {"orderId": "O1", "itemCount": count, "submission": submission, "published": published,
            "decision": {"itemIndex": index, "status": status, "reservationId": f"R-{index}"}}


def test_an_order_result_is_published_once_per_submission() -> None:
    orders = Orders()
    assert collect(orders, [decision(1, 2, "0:5", "WAITLISTED")]) == []  # type: ignore[arg-type]
    assert orders.data["O1"].get("result") is None
    published = collect(orders, [decision(0, 2, "0:5")])  # type: ignore[arg-type]
    assert [order_id for order_id, _ in published] == ["O1"]
    result = published[0][1]
    assert result["success"] is True and len(result["reservations"]) == 1 and len(result["waitlisted"]) == 1
    assert orders.data["O1"]["result"] == result
    # a resubmission (another pre-orders message) re-decides both items: one more result
    assert collect(orders, [decision(0, 2, "1:9")]) == []  # type: ignore[arg-type]
    again = collect(orders, [decision(1, 2, "1:9", "WAITLISTED")])  # type: ignore[arg-type]
    assert again == [("O1", result)]


def test_single_item_results_are_stored_not_republished() -> None:
    orders = Orders()
    assert collect(orders, [decision(0, 1, "0:1", published=True)]) == []  # type: ignore[arg-type]
    assert orders.data["O1"]["result"]["reservations"][0]["reservationId"] == "R-0"


async def test_waiting_requests_are_resolved_by_order_id() -> None:
    waiters = ResultWaiters()
    first, second, other = waiters.expect("O1"), waiters.expect("O1"), waiters.expect("O2")
    waiters.resolve(b"O9", b'{"orderId": "O9"}')
    waiters.resolve(b"O1", b'{"orderId": "O1", "success": true}')
    assert first.result() == second.result() == {"orderId": "O1", "success": True}
    assert not other.done()
    waiters.forget("O2", other)
    waiters.resolve(b"O2", b"{}")
    assert not other.done()
    await asyncio.sleep(0)
