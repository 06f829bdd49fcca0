"""Future ATP: the cumulative look-ahead rule, the /atp fields and overbooking rates."""

from __future__ import annotations

import math
from datetime import date, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.future_atp import (
    Supply,
    atp_response,
    future_atp,
    overbooking_rate_for,
    within_limits,
)

D1 = date(2030, 3, 1)
D2 = date(2030, 3, 15)
D3 = date(2030, 4, 1)


def test_single_date_reduces_to_the_simple_formula() -> None:
    supply = Supply(100, ((D1, 20),), overbooking_rate=1.05)
    assert supply.limit(D2) == 126  # floor(1.05 * 120)
    assert future_atp(supply, {D2: 26}, D2) == 100


def test_rates_are_exact_decimals() -> None:
    assert Supply(100, (), 1.05).limit(D1) == 105  # not 104 from 105.00000000000001 floors
    assert Supply(10, (), 1.1).limit(D1) == 11
    assert Supply(7, (), 1.15).limit(D1) == 8  # floor(8.05)


def test_arrivals_count_only_from_their_date() -> None:
    supply = Supply(10, ((D2, 50),), 1.0)
    assert supply.limit(D1) == 10
    assert supply.limit(D2) == 60
    assert future_atp(supply, {}, D1) == 10
    assert future_atp(supply, {}, D2) == 60
    assert supply.expected_by(D1) == 0 and supply.expected_by(D3) == 50


def test_a_unit_promised_earlier_is_not_promised_again_later() -> None:
    supply = Supply(10, (), 1.0)
    # 10 units promised for D1: nothing left for D2 even though D2 has no reservation
    assert future_atp(supply, {D1: 10}, D2) == 0
    # a later reservation constrains an earlier date too
    assert future_atp(supply, {D2: 7}, D1) == 3


def test_later_shortage_limits_earlier_dates() -> None:
    # stock arrives on D2; D3 already holds it; D1 may only use what D3 leaves
    supply = Supply(5, ((D2, 10),), 1.0)
    held = {D3: 12}
    assert future_atp(supply, held, D1) == 3  # min(5 - 0, 15 - 0, 15 - 12)
    assert future_atp(supply, held, D3) == 3


def test_expected_supply_factor() -> None:
    supply = Supply(10, ((D1, 15),), overbooking_rate=1.0, expected_supply_factor=0.5)
    assert supply.limit(D1) == 17  # floor(10 + 7.5)
    assert Supply(10, ((D1, 15),), 1.05, 0.0).limit(D1) == 10


def test_supply_validation_and_from_expected() -> None:
    with pytest.raises(ValueError):
        Supply(1, (), overbooking_rate=0)
    with pytest.raises(ValueError):
        Supply(1, (), expected_supply_factor=1.5)
    supply = Supply.from_expected(
        3,
        [
            {"ref": "PO1", "quantity": 4, "expectedOn": "2030-03-01"},
            {"ref": "PO2", "quantity": 2, "expectedOn": "2030-03-01T10:00:00Z"},
            {"ref": "PO3", "quantity": 0, "expectedOn": "2030-03-02"},
        ],
    )
    assert supply.arrival_dates == (D1,)
    assert supply.limit(D1) == 9


def test_atp_response_fields() -> None:
    supply = Supply(100, ((D1, 20), (D3, 50)), 1.05)
    response = atp_response(supply, {D1: 30, D2: 10, D3: 5}, D2, quantity=5)
    assert response == {
        "shipDate": "2030-03-15",
        "quantity": 5,
        "currentInventory": 100,
        "expectedArrival": 20,
        "totalExpected": 120,
        "existingReservations": 40,
        "overbookingRate": 1.05,
        "overbookingLimit": 126,
        "availableToPromise": 86,
        "canFulfill": True,
        "recommendation": "RESERVE",
    }
    short = atp_response(supply, {D2: 126}, D2, quantity=1)
    assert short["availableToPromise"] == 0 and short["canFulfill"] is False
    assert short["recommendation"] == "WAITLIST"
    assert (
        atp_response(supply, {D2: 126}, D2, 1, waitlist_enabled=False)["recommendation"] == "REJECT"
    )


def test_overbooking_rate_lookup() -> None:
    rates = {"CONSOLE-*": 1.0, "CONSOLE-PS6-*": 1.02, "SNEAKERS": 1.2, "TV-1": 1.3}
    assert overbooking_rate_for("CONSOLE-PS6-WHITE", None, rates, 1.05) == 1.02
    assert overbooking_rate_for("CONSOLE-X", None, rates, 1.05) == 1.0
    assert overbooking_rate_for("SHOE-1", "SNEAKERS", rates, 1.05) == 1.2
    assert overbooking_rate_for("CONSOLE-X", "SNEAKERS", rates, 1.05) == 1.2  # category first
    assert overbooking_rate_for("TV-1", None, rates, 1.05) == 1.3
    assert overbooking_rate_for("PHONE", "PHONES", rates, 1.05) == 1.05


dates = st.integers(min_value=0, max_value=40).map(lambda n: D1 + timedelta(days=n))


@settings(max_examples=200, deadline=None)
@given(
    current=st.integers(0, 500),
    expected=st.integers(0, 500),
    rate=st.sampled_from([1.0, 1.05, 1.1, 1.25, 2.0]),
    held=st.integers(0, 600),
)
def test_single_date_property(current: int, expected: int, rate: float, held: int) -> None:
    supply = Supply(current, ((D1, expected),), rate)
    limit = math.floor(Fraction(str(rate)) * (current + expected))
    assert future_atp(supply, {D2: held}, D2) == limit - held


@settings(max_examples=200, deadline=None)
@given(
    current=st.integers(0, 100),
    arrivals=st.lists(st.tuples(dates, st.integers(1, 50)), max_size=4),
    held=st.dictionaries(dates, st.integers(0, 80), max_size=5),
    ship=dates,
)
def test_atp_is_the_largest_safe_addition(
    current: int, arrivals: list[tuple[date, int]], held: dict[date, int], ship: date
) -> None:
    supply = Supply(current, tuple(arrivals), 1.05)
    atp = future_atp(supply, held, ship)
    if within_limits(supply, held) and atp > 0:
        grown = dict(held)
        grown[ship] = grown.get(ship, 0) + atp
        assert within_limits(supply, grown)
        grown[ship] += 1
        assert not within_limits(supply, grown)
