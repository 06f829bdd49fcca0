"""Priority of pre-order reservations: tier score first, then arrival.

The priority key is the tuple ``(-tier_score, sequence)`` and is compared as a tuple, so
every higher tier comes before every lower tier whatever their arrival; never mix tier and
time arithmetically into one number. Smaller key = higher priority.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

PriorityKey = tuple[int, int]

DEFAULT_TIER_SCORES: Mapping[str, int] = {"PLATINUM": 150, "VIP": 100, "STANDARD": 50}
STANDARD_TIER = "STANDARD"


def normalize_tier(tier: str) -> str:
    """Tier names are case-insensitive and stored upper-case."""
    return tier.strip().upper()


def standard_tier(scores: Mapping[str, int]) -> str:
    """The tier unknown tiers fall back to: STANDARD, else the lowest-scored configured tier."""
    if STANDARD_TIER in scores or not scores:
        return STANDARD_TIER
    return min(scores.items(), key=lambda item: (item[1], item[0]))[0]


def tier_score(tier: str, scores: Mapping[str, int]) -> int:
    """Score of ``tier``; an unconfigured tier scores as the fallback tier (or 0)."""
    score = scores.get(tier)
    if score is not None:
        return score
    return scores.get(standard_tier(scores), 0)


def priority_key(score: int, sequence: int) -> PriorityKey:
    """``(-score, sequence)``: compare as a tuple, smaller is served first."""
    return (-score, sequence)


def tier_priority_key(tier: str, sequence: int, scores: Mapping[str, int]) -> PriorityKey:
    return priority_key(tier_score(tier, scores), sequence)


class Prioritised(Protocol):
    @property
    def tier_score(self) -> int: ...

    @property
    def sequence(self) -> int: ...


_P = TypeVar("_P", bound=Prioritised)


def in_priority_order(items: Iterable[_P]) -> list[_P]:
    """Items of ONE queue sorted by priority key (a stable sort; no arithmetic)."""
    return sorted(items, key=lambda item: priority_key(item.tier_score, item.sequence))
