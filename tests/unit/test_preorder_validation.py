"""Pre-order validation: every reason reported, never a crash; tiers; the ship-date window."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.preorders import (
    ItemRequest,
    Policy,
    PreOrder,
    PreOrderInvalid,
    invalid_pre_order_result,
    json_depth,
    order_conflicts,
    parse_pre_order,
    pre_order_result,
    validate_pre_order,
)
from stream_app.domain.priority import in_priority_order, priority_key, tier_priority_key
from stream_app.settings import Settings

TODAY = date(2030, 1, 1)
POLICY = Policy()


def order(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "orderId": "O-1",
        "customerId": "C-1",
        "customerEmail": "ann@example.com",
        "customerTier": "VIP",
        "shipDate": (TODAY + timedelta(days=30)).isoformat(),
        "source": "web",
        "items": [
            {"sku": "PS6", "productName": "Console", "quantity": 1, "locationRef": "DC1"},
        ],
    }
    raw.update(overrides)
    return raw


def reasons(raw: Any, policy: Policy = POLICY) -> list[str]:
    result = validate_pre_order(raw, policy, TODAY)
    assert isinstance(result, list), result
    return result


def test_valid_pre_order_is_typed() -> None:
    result = validate_pre_order(order(customerTier="vip"), POLICY, TODAY)
    assert isinstance(result, PreOrder)
    assert result.tier == "VIP"
    assert result.ship_date == date(2030, 1, 31)
    assert result.items[0].sku == "PS6" and result.items[0].location == "DC1"
    requests = result.item_requests()
    assert requests == [
        ItemRequest(
            order_id="O-1",
            item_index=0,
            customer_id="C-1",
            customer_email="ann@example.com",
            tier="VIP",
            ship_date=date(2030, 1, 31),
            sku="PS6",
            location="DC1",
            quantity=1,
            product_name="Console",
            source="web",
        )
    ]
    assert ItemRequest.from_dict(requests[0].to_dict()) == requests[0]


def test_not_an_object() -> None:
    assert reasons([1, 2]) == ["pre-order must be a JSON object"]
    assert reasons(None) == ["pre-order must be a JSON object"]


def test_every_reason_is_reported() -> None:
    raw = {"customerTier": "GOLD", "shipDate": "not-a-date", "items": []}
    found = reasons(raw)
    assert any(r.startswith("orderId") for r in found)
    assert any(r.startswith("customerId") for r in found)
    assert any(r.startswith("customerEmail") for r in found)
    assert any("customerTier 'GOLD' is unknown" in r for r in found)
    assert any(r.startswith("shipDate") for r in found)
    assert any(r.startswith("items") for r in found)
    assert len(found) == 6


@pytest.mark.parametrize("quantity", [0, -1, 1.0, 2.5, "1", True, False, None, [1], {"n": 1}])
def test_quantity_must_be_positive_json_int(quantity: Any) -> None:
    raw = order(items=[{"sku": "A", "locationRef": "L", "quantity": quantity}])
    assert reasons(raw) == ["items[0].quantity must be a positive integer"]


def test_item_problems_are_indexed() -> None:
    raw = order(
        items=[
            {"sku": "A", "locationRef": "L", "quantity": 1},
            {"locationRef": "L", "quantity": 0},
            "junk",
            {"sku": "A|B", "locationRef": "", "quantity": 2},
        ]
    )
    assert reasons(raw) == [
        "items[1].sku is required (a non-empty string)",
        "items[1].quantity must be a positive integer",
        "items[2] must be an object",
        "items[3].sku must not contain '|'",
        "items[3].locationRef is required (a non-empty string)",
    ]


def test_items_must_be_a_non_empty_list() -> None:
    assert reasons(order(items=[])) == ["items must hold at least one item"]
    assert reasons(order(items={"sku": "A"})) == [
        "items is required (a list with at least one item)"
    ]


def test_ship_date_window_is_relative_to_today() -> None:
    earliest = TODAY + timedelta(days=7)
    latest = TODAY + timedelta(days=180)
    assert isinstance(
        validate_pre_order(order(shipDate=earliest.isoformat()), POLICY, TODAY), PreOrder
    )
    assert isinstance(
        validate_pre_order(order(shipDate=latest.isoformat()), POLICY, TODAY), PreOrder
    )
    too_early = reasons(order(shipDate=(earliest - timedelta(days=1)).isoformat()))
    assert len(too_early) == 1 and "too early" in too_early[0]
    too_late = reasons(order(shipDate=(latest + timedelta(days=1)).isoformat()))
    assert len(too_late) == 1 and "too late" in too_late[0]
    # the window moves with "today"
    later = validate_pre_order(
        order(shipDate=earliest.isoformat()), POLICY, TODAY + timedelta(days=1)
    )
    assert isinstance(later, list)


def test_ship_date_accepts_an_aware_datetime() -> None:
    result = validate_pre_order(order(shipDate="2030-01-31T23:30:00-02:00"), POLICY, TODAY)
    assert isinstance(result, PreOrder)
    assert result.ship_date == date(2030, 2, 1)  # converted to UTC
    assert reasons(order(shipDate=20300131))[0].startswith("shipDate is required")


def test_unknown_tier_reject_or_standard() -> None:
    assert reasons(order(customerTier="GOLD"))[0].startswith("customerTier 'GOLD' is unknown")
    assert reasons(order(customerTier=None)) == ["customerTier is required"]
    lenient = Policy(unknown_tier_policy="standard")
    result = validate_pre_order(order(customerTier="GOLD"), lenient, TODAY)
    assert isinstance(result, PreOrder)
    assert result.tier == "STANDARD" and result.requested_tier == "GOLD"
    missing = validate_pre_order(order(customerTier=None), lenient, TODAY)
    assert isinstance(missing, PreOrder) and missing.tier == "STANDARD"


def test_standard_fallback_without_a_standard_tier() -> None:
    policy = Policy(tier_scores={"gold": 10, "silver": 5}, unknown_tier_policy="standard")
    result = validate_pre_order(order(customerTier="bronze"), policy, TODAY)
    assert isinstance(result, PreOrder) and result.tier == "SILVER"


def test_max_per_customer_within_one_order() -> None:
    policy = Policy(max_per_customer=1)
    raw = order(
        items=[
            {"sku": "PS6", "locationRef": "DC1", "quantity": 1},
            {"sku": "PS6", "locationRef": "DC2", "quantity": 1},
            {"sku": "GAME", "locationRef": "DC1", "quantity": 1},
        ]
    )
    assert reasons(raw, policy) == ["sku 'PS6': 2 units exceed max_per_customer (1)"]
    assert isinstance(validate_pre_order(order(), policy, TODAY), PreOrder)


def test_integer_ids_are_accepted_as_text() -> None:
    result = validate_pre_order(order(orderId=42, customerId=7), POLICY, TODAY)
    assert isinstance(result, PreOrder)
    assert (result.order_id, result.customer_id) == ("42", "7")
    assert reasons(order(orderId=True))[0].startswith("orderId")


def test_parse_raises_with_all_reasons() -> None:
    with pytest.raises(PreOrderInvalid) as caught:
        parse_pre_order(order(orderId="", items=[]), POLICY, TODAY)
    assert len(caught.value.reasons) == 2


def test_policy_from_settings() -> None:
    settings = Settings(
        tier_scores={"vip": 100, "STANDARD": 50},
        unknown_tier_policy="standard",
        max_per_customer=1,
        release_committed_first=True,
        _env_file=None,  # type: ignore[call-arg]
    )
    policy = Policy.from_settings(settings)
    assert policy.tier_scores == {"VIP": 100, "STANDARD": 50}
    assert policy.unknown_tier_policy == "standard"
    assert policy.max_per_customer == 1 and policy.committed_first
    assert policy.max_queue_depth == settings.max_queue_depth


def test_pre_order_results() -> None:
    decisions = [
        {"itemIndex": 1, "status": "WAITLISTED", "reservationId": "R-2"},
        {"itemIndex": 0, "status": "RESERVED", "reservationId": "R-1"},
    ]
    result = pre_order_result("O-1", decisions)
    assert result["success"] is True
    assert [r["reservationId"] for r in result["reservations"]] == ["R-1"]
    assert [r["reservationId"] for r in result["waitlisted"]] == ["R-2"]
    rejected = pre_order_result("O-1", [{"itemIndex": 0, "status": "REJECTED"}])
    assert rejected["success"] is False and len(rejected["failedItems"]) == 1
    invalid = invalid_pre_order_result("O-1", ["a", "b"])
    assert invalid["success"] is False and invalid["message"].endswith("a; b")


def test_priority_is_a_tuple_never_a_mix() -> None:
    scores = {"VIP": 100, "STANDARD": 50}
    assert tier_priority_key("VIP", 10**9, scores) < tier_priority_key("STANDARD", 1, scores)
    assert priority_key(50, 1) < priority_key(50, 2)
    assert tier_priority_key("UNKNOWN", 1, scores) == (-50, 1)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = ["orderId", "customerId", "customerEmail", "customerTier", "shipDate", "items", "source"]


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        _JSON,
        st.fixed_dictionaries({}, optional={name: _JSON for name in _FIELDS}),
        st.builds(
            lambda items: order(items=items),
            st.lists(
                st.fixed_dictionaries(
                    {}, optional={n: _JSON for n in ["sku", "locationRef", "quantity"]}
                ),
                max_size=3,
            ),
        ),
    )
)
def test_never_crashes(raw: Any) -> None:
    result = validate_pre_order(raw, POLICY, TODAY)
    assert isinstance(result, PreOrder) or (isinstance(result, list) and result)
    if isinstance(result, PreOrder):
        assert all(type(item.quantity) is int and item.quantity > 0 for item in result.items)


def test_priority_order_helper() -> None:
    class Item:
        def __init__(self, score: int, sequence: int) -> None:
            self.tier_score = score
            self.sequence = sequence

    items = [Item(50, 1), Item(100, 9), Item(50, 0), Item(150, 20)]
    assert [(i.tier_score, i.sequence) for i in in_priority_order(items)] == [
        (150, 20),
        (100, 9),
        (50, 0),
        (50, 1),
    ]


def test_quantities_and_strings_are_bounded() -> None:
    policy = Policy(max_quantity=100, max_text_length=20)
    huge = order(items=[{"sku": "PS6", "quantity": 10**12, "locationRef": "DC1"}])
    assert validate_pre_order(huge, policy, TODAY) == ["items[0].quantity must be at most 100"]
    long = order(orderId="o" * 21, items=[{"sku": "S" * 25, "quantity": 1, "locationRef": "DC1"}])
    reasons = validate_pre_order(long, policy, TODAY)
    assert reasons == ["orderId is longer than 20 characters",
                       "items[0].sku is longer than 20 characters"]
    assert isinstance(validate_pre_order(order(), policy, TODAY), PreOrder)


def test_a_resend_with_other_content_is_a_conflict() -> None:
    placed = parse_pre_order(order(), POLICY, TODAY)
    recorded = [{**r.to_dict(), "itemIndex": r.item_index} for r in placed.item_requests()]
    assert order_conflicts(placed, recorded) == []
    assert order_conflicts(placed, []) == []
    more = parse_pre_order(order(items=[{"sku": "PS6", "quantity": 2, "locationRef": "DC1"}]),
                           POLICY, TODAY)
    assert order_conflicts(more, recorded) == ["items[0].quantity was 1, now 2"]
    later = parse_pre_order(order(shipDate=(TODAY + timedelta(days=31)).isoformat()), POLICY, TODAY)
    assert [r.split(" was")[0] for r in order_conflicts(later, recorded)] == ["shipDate"]


@given(st.recursive(st.integers() | st.text(max_size=3),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=2), kids, max_size=3),
                    max_leaves=30))
def test_json_depth_counts_nesting(value: Any) -> None:
    def depth(v: Any) -> int:
        children = list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else []
        return 1 + max(map(depth, children), default=0) if children else 0

    assert json_depth(value, 1000) == depth(value)
    assert json_depth(value, 2) <= 3


def test_a_reservation_says_whether_a_higher_tier_may_still_bump_it() -> None:
    from stream_app.domain.preorders import bump_exposure, with_bump_exposure

    policy = Policy()  # PLATINUM 150, VIP 100, STANDARD 50; preemption and waitlist on
    assert bump_exposure("STANDARD", "RESERVED", policy) == {"tierRank": 3, "provisional": True}
    assert bump_exposure("VIP", "RESERVED", policy) == {"tierRank": 2, "provisional": True}
    assert bump_exposure("PLATINUM", "RESERVED", policy) == {"tierRank": 1, "provisional": False}
    assert bump_exposure("STANDARD", "WAITLISTED", policy)["provisional"] is False
    assert bump_exposure("STANDARD", "RESERVED", Policy(priority_preemption=False))["provisional"] is False
    body = {"orderId": "O", "reservations": [{"reservationId": "R", "status": "RESERVED", "tier": "VIP"}]}
    assert with_bump_exposure(body, policy)["reservations"][0]["provisional"] is True
    assert "provisional" not in with_bump_exposure(body, policy)  # only on reservations
