"""Future ATP: the cumulative look-ahead rule that decides whether a pre-order fits.

For one SKU/location with current ATP ``c``, expected arrivals ``a(d)``, expected supply
factor ``f`` and overbooking rate ``r``::

    limit(d) = floor(r × (c + f × Σ a(e) for e ≤ d))
    ATP(D)   = min over dates d ≥ D of (limit(d) − Σ held(s) for s ≤ d)

where the dates are every date that appears in the arrivals or the reservations, plus
``D``. A unit promised to an earlier ship date is therefore never promised again to a later
one. ``r`` and ``f`` are used as exact decimals (``Fraction(str(x))``), so 1.05 × 100 is
105, never 104.99999.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import Any


def _exact(value: float | int | str) -> Fraction:
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def _as_date(value: date | str) -> date:
    if isinstance(value, date):
        return value
    return date.fromisoformat(value[:10])


@dataclass(frozen=True)
class Supply:
    """What one SKU/location can promise: current ATP plus expected arrivals.

    ``arrivals`` are ``(expectedOn, quantity)`` pairs (several per date allowed; quantities
    ≤ 0 are ignored). Immutable; the step function ``limit`` is computed once.
    """

    current_atp: int
    arrivals: tuple[tuple[date, int], ...] = ()
    overbooking_rate: float = 1.0
    expected_supply_factor: float = 1.0
    _dates: tuple[date, ...] = field(init=False, repr=False, compare=False)
    _expected: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _limits: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _base_limit: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.overbooking_rate <= 0:
            raise ValueError("overbooking_rate must be positive")
        if not 0 <= self.expected_supply_factor <= 1:
            raise ValueError("expected_supply_factor must be within 0..1")
        per_date: dict[date, int] = {}
        for when, quantity in self.arrivals:
            if quantity > 0:
                per_date[when] = per_date.get(when, 0) + quantity
        rate = _exact(self.overbooking_rate)
        factor = _exact(self.expected_supply_factor)
        dates = tuple(sorted(per_date))
        expected: list[int] = []
        limits: list[int] = []
        running = 0
        for when in dates:
            running += per_date[when]
            expected.append(running)
            limits.append(math.floor(rate * (self.current_atp + factor * running)))
        object.__setattr__(self, "_dates", dates)
        object.__setattr__(self, "_expected", tuple(expected))
        object.__setattr__(self, "_limits", tuple(limits))
        object.__setattr__(self, "_base_limit", math.floor(rate * self.current_atp))

    @classmethod
    def from_expected(
        cls,
        current_atp: int,
        expected: Iterable[Mapping[str, Any]],
        overbooking_rate: float = 1.0,
        expected_supply_factor: float = 1.0,
    ) -> Supply:
        """From expected-arrival dicts ``{"quantity", "expectedOn"}`` (ISO date or date)."""
        arrivals = tuple((_as_date(item["expectedOn"]), int(item["quantity"])) for item in expected)
        return cls(current_atp, arrivals, overbooking_rate, expected_supply_factor)

    @property
    def arrival_dates(self) -> tuple[date, ...]:
        return self._dates

    def expected_by(self, when: date) -> int:
        """Σ arrivals (raw, before the supply factor) with expectedOn ≤ ``when``."""
        index = bisect_right(self._dates, when)
        return self._expected[index - 1] if index else 0

    def limit(self, when: date) -> int:
        """``floor(r × (current + f × Σ arrivals with expectedOn ≤ when))``."""
        index = bisect_right(self._dates, when)
        return self._limits[index - 1] if index else self._base_limit


def future_atp(supply: Supply, held_by_date: Mapping[date, int], ship_date: date) -> int:
    """ATP(ship_date) under the cumulative rule; may be negative if supply shrank.

    ``held_by_date``: units held by active reservations per ship date. Cost is
    O(number of distinct dates).
    """
    dates = set(supply.arrival_dates)
    dates.update(held_by_date)
    dates.add(ship_date)
    held = 0
    best: int | None = None
    for when in sorted(dates):
        held += held_by_date.get(when, 0)
        if when >= ship_date:
            value = supply.limit(when) - held
            if best is None or value < best:
                best = value
    assert best is not None  # ship_date itself is always in ``dates``
    return best


def within_limits(supply: Supply, held_by_date: Mapping[date, int]) -> bool:
    """The invariant: for every date, cumulative held units ≤ the cumulative limit."""
    held = 0
    for when in sorted(set(supply.arrival_dates) | set(held_by_date)):
        held += held_by_date.get(when, 0)
        if held > supply.limit(when):
            return False
    return True


def atp_response(
    supply: Supply,
    held_by_date: Mapping[date, int],
    ship_date: date,
    quantity: int = 1,
    waitlist_enabled: bool = True,
) -> dict[str, Any]:
    """The ``GET /atp`` fields for one SKU/location, ship date and quantity.

    * ``currentInventory``: current ATP;
    * ``expectedArrival``: raw Σ arrivals with expectedOn ≤ shipDate;
    * ``totalExpected``: currentInventory + expectedArrival;
    * ``existingReservations``: units held by active reservations with shipDate ≤ shipDate;
    * ``overbookingLimit``: limit(shipDate) (rate and supply factor applied);
    * ``availableToPromise``: max(0, ATP(shipDate)) under the cumulative rule (it can be
      below overbookingLimit − existingReservations when a later date is short);
    * ``canFulfill``: ATP ≥ quantity; ``recommendation``: RESERVE | WAITLIST | REJECT.
    """
    atp = future_atp(supply, held_by_date, ship_date)
    expected = supply.expected_by(ship_date)
    existing = sum(units for when, units in held_by_date.items() if when <= ship_date)
    can = atp >= quantity
    if can:
        recommendation = "RESERVE"
    else:
        recommendation = "WAITLIST" if waitlist_enabled else "REJECT"
    return {
        "shipDate": ship_date.isoformat(),
        "quantity": quantity,
        "currentInventory": supply.current_atp,
        "expectedArrival": expected,
        "totalExpected": supply.current_atp + expected,
        "existingReservations": existing,
        "overbookingRate": supply.overbooking_rate,
        "overbookingLimit": supply.limit(ship_date),
        "availableToPromise": max(0, atp),
        "canFulfill": can,
        "recommendation": recommendation,
    }


def overbooking_rate_for(
    sku: str, category: str | None, rates: Mapping[str, float], default: float
) -> float:
    """The overbooking rate of a SKU.

    ``rates`` keys are categories or SKU glob patterns (``fnmatch``, case-sensitive).
    Precedence: exact category, then exact SKU, then the longest matching SKU pattern
    (ties by key order), else ``default``.
    """
    if category is not None and category in rates:
        return rates[category]
    if sku in rates:
        return rates[sku]
    best: tuple[int, str] | None = None
    for pattern in rates:
        if fnmatchcase(sku, pattern):
            candidate = (-len(pattern), pattern)
            if best is None or candidate < best:
                best = candidate
    return rates[best[1]] if best is not None else default
