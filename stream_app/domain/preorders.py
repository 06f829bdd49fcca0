"""Pre-order intake rules: the campaign policy, validation and the per-item requests.

:func:`validate_pre_order` turns a decoded JSON pre-order into a typed :class:`PreOrder`
or the list of EVERY reason it is invalid (never raises on bad input). A valid pre-order
is split into one :class:`ItemRequest` per item; each is decided by the reservation book
of its SKU/location. :func:`pre_order_result` assembles the ``pre-order-results`` value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from stream_app.domain.priority import DEFAULT_TIER_SCORES, normalize_tier, standard_tier

if TYPE_CHECKING:
    from stream_app.settings import Settings

UnknownTierPolicy = Literal["reject", "standard"]


@dataclass(frozen=True)
class Policy:
    """Every pre-order/reservation/release rule switch (see :meth:`from_settings`)."""

    tier_scores: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_TIER_SCORES))
    unknown_tier_policy: UnknownTierPolicy = "reject"
    min_days_ahead: int = 7
    max_days_ahead: int = 180
    max_per_customer: int | None = None
    waitlist_enabled: bool = True
    max_queue_depth: int = 10_000
    priority_preemption: bool = True
    commit_required: bool = True
    expiry_days: int = 7
    committed_first: bool = False
    max_quantity: int = 10_000  # of one item
    max_text_length: int = 200  # ids, e-mail, tier, product name, category, source
    #: HMAC key of reservation ids (empty: unkeyed ids), see domain.ids.reservation_id
    id_secret: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        scores = {normalize_tier(name): int(score) for name, score in self.tier_scores.items()}
        object.__setattr__(self, "tier_scores", scores)
        if self.unknown_tier_policy not in ("reject", "standard"):
            raise ValueError("unknown_tier_policy must be 'reject' or 'standard'")

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        policy = settings.unknown_tier_policy
        return cls(
            tier_scores=dict(settings.tier_scores),
            unknown_tier_policy="standard" if policy == "standard" else "reject",
            min_days_ahead=settings.min_days_ahead,
            max_days_ahead=settings.max_days_ahead,
            max_per_customer=settings.max_per_customer,
            waitlist_enabled=settings.waitlist_enabled,
            max_queue_depth=settings.max_queue_depth,
            priority_preemption=settings.priority_preemption,
            commit_required=settings.commit_required,
            expiry_days=settings.expiry_days,
            committed_first=settings.release_committed_first,
            max_quantity=settings.max_order_quantity,
            max_text_length=settings.max_text_length,
            id_secret=settings.reservation_id_secret.get_secret_value().encode(),
        )


@dataclass(frozen=True, slots=True)
class PreOrderItem:
    index: int
    sku: str
    location: str
    quantity: int
    product_name: str = ""
    category: str | None = None


@dataclass(frozen=True, slots=True)
class ItemRequest:
    """One item of a valid pre-order: the unit a reservation book decides.

    Crosses the repartition topic as :meth:`to_dict` (JSON-safe, camelCase).
    """

    order_id: str
    item_index: int
    customer_id: str
    customer_email: str
    tier: str
    ship_date: date
    sku: str
    location: str
    quantity: int
    product_name: str = ""
    category: str | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "orderId": self.order_id,
            "itemIndex": self.item_index,
            "customerId": self.customer_id,
            "customerEmail": self.customer_email,
            "tier": self.tier,
            "shipDate": self.ship_date.isoformat(),
            "sku": self.sku,
            "location": self.location,
            "quantity": self.quantity,
            "productName": self.product_name,
            "category": self.category,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemRequest:
        return cls(
            order_id=str(data["orderId"]),
            item_index=int(data["itemIndex"]),
            customer_id=str(data["customerId"]),
            customer_email=str(data.get("customerEmail") or ""),
            tier=str(data["tier"]),
            ship_date=date.fromisoformat(str(data["shipDate"])),
            sku=str(data["sku"]),
            location=str(data["location"]),
            quantity=int(data["quantity"]),
            product_name=str(data.get("productName") or ""),
            category=None if data.get("category") is None else str(data["category"]),
            source=str(data.get("source") or ""),
        )


@dataclass(frozen=True, slots=True)
class PreOrder:
    order_id: str
    customer_id: str
    customer_email: str
    tier: str
    ship_date: date
    items: tuple[PreOrderItem, ...]
    source: str = ""
    requested_tier: str | None = None  # the tier as sent, when it was mapped to STANDARD

    def item_requests(self) -> list[ItemRequest]:
        return [
            ItemRequest(
                order_id=self.order_id,
                item_index=item.index,
                customer_id=self.customer_id,
                customer_email=self.customer_email,
                tier=self.tier,
                ship_date=self.ship_date,
                sku=item.sku,
                location=item.location,
                quantity=item.quantity,
                product_name=item.product_name,
                category=item.category,
                source=self.source,
            )
            for item in self.items
        ]


class PreOrderInvalid(ValueError):
    """A pre-order failed validation; ``reasons`` lists every problem."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


def is_positive_int(value: Any) -> bool:
    """A JSON integer > 0: not a bool, float or numeric string."""
    return type(value) is int and value > 0


def _identifier(
    raw: Mapping[str, Any], name: str, reasons: list[str], key_part: bool = False
) -> str:
    """A non-empty string (JSON integers accepted); ``key_part`` ones may not hold ``|``."""
    value = raw.get(name)
    if type(value) is int:
        return str(value)
    if isinstance(value, str) and value.strip():
        if key_part and "|" in value:
            reasons.append(f"{name} must not contain '|'")
        return value.strip()
    reasons.append(f"{name} is required (a non-empty string)")
    return ""


def _parse_ship_date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.date()


def _resolve_tier(raw: Any, policy: Policy, reasons: list[str]) -> tuple[str, str | None]:
    """(tier to use, tier as sent when it was mapped to the fallback tier)."""
    sent = normalize_tier(raw) if isinstance(raw, str) else ""
    if sent and sent in policy.tier_scores:
        return sent, None
    if policy.unknown_tier_policy == "standard":
        return standard_tier(policy.tier_scores), sent or None
    if not sent:
        reasons.append("customerTier is required")
    else:
        known = ", ".join(sorted(policy.tier_scores))
        reasons.append(f"customerTier {sent[:40]!r} is unknown (known: {known})")
    return "", None


def ship_date_problems(ship_date: date, policy: Policy, today: date) -> list[str]:
    """Why ``ship_date`` is outside ``today + [min_days_ahead, max_days_ahead]``; [] when inside."""
    earliest = today + timedelta(days=policy.min_days_ahead)
    latest = today + timedelta(days=policy.max_days_ahead)
    if ship_date < earliest:
        return [
            f"shipDate {ship_date.isoformat()} is too early: at least "
            f"{policy.min_days_ahead} days ahead (earliest {earliest.isoformat()})"
        ]
    if ship_date > latest:
        return [
            f"shipDate {ship_date.isoformat()} is too late: at most "
            f"{policy.max_days_ahead} days ahead (latest {latest.isoformat()})"
        ]
    return []


def quantity_problems(quantity: Any, policy: Policy) -> list[str]:
    """Why ``quantity`` is not a JSON integer in ``1..max_quantity``; [] when it is."""
    if not is_positive_int(quantity):
        return ["quantity must be a positive integer"]
    if quantity > policy.max_quantity:
        return [f"quantity must be at most {policy.max_quantity}"]
    return []


def key_problems(sku: str, location: str, policy: Policy) -> list[str]:
    """Why ``sku``/``location`` cannot name an item (empty, ``|``, too long); [] when fine."""
    reasons: list[str] = []
    for name, value in (("sku", sku), ("locationRef", location)):
        _identifier({name: value}, name, reasons, key_part=True)
        if len(value) > policy.max_text_length:
            reasons.append(f"{name} is longer than {policy.max_text_length} characters")
    return reasons


def json_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests (a scalar is 0), counted no further than ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list) and node:
            if depth + 1 > limit:
                return depth + 1
            deepest = max(deepest, depth + 1)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


_TEXT_FIELDS = ("orderId", "customerId", "customerEmail", "customerTier", "shipDate", "source")
_ITEM_TEXT_FIELDS = ("sku", "locationRef", "location", "productName", "category")


def _check_lengths(raw: Mapping[str, Any], limit: int, reasons: list[str]) -> None:
    def check(where: str, value: Any) -> None:
        if isinstance(value, str) and len(value) > limit:
            reasons.append(f"{where} is longer than {limit} characters")

    for name in _TEXT_FIELDS:
        check(name, raw.get(name))
    items = raw.get("items")
    if isinstance(items, list):
        for index, entry in enumerate(items):
            if isinstance(entry, Mapping):
                for name in _ITEM_TEXT_FIELDS:
                    check(f"items[{index}].{name}", entry.get(name))


def _parse_items(raw: Any, policy: Policy, reasons: list[str]) -> list[PreOrderItem]:
    if not isinstance(raw, list):
        reasons.append("items is required (a list with at least one item)")
        return []
    if not raw:
        reasons.append("items must hold at least one item")
        return []
    items: list[PreOrderItem] = []
    for index, entry in enumerate(raw):
        where = f"items[{index}]"
        if not isinstance(entry, Mapping):
            reasons.append(f"{where} must be an object")
            continue
        problems_before = len(reasons)
        sku = _identifier(entry, "sku", reasons, key_part=True)
        location_raw = entry.get("locationRef", entry.get("location"))
        location = _identifier({"locationRef": location_raw}, "locationRef", reasons, True)
        quantity = entry.get("quantity")
        reasons.extend(quantity_problems(quantity, policy))
        name = entry.get("productName")
        if name is not None and not isinstance(name, str):
            reasons.append("productName must be a string")
        category = entry.get("category")
        if category is not None and not isinstance(category, str):
            reasons.append("category must be a string")
        for i in range(problems_before, len(reasons)):
            reasons[i] = f"{where}.{reasons[i]}"
        if len(reasons) == problems_before and isinstance(quantity, int):
            items.append(
                PreOrderItem(
                    index=index,
                    sku=sku,
                    location=location,
                    quantity=quantity,
                    product_name=name or "",
                    category=category,
                )
            )
    return items


def validate_pre_order(raw: Any, policy: Policy, today: date) -> PreOrder | list[str]:
    """A typed :class:`PreOrder`, or every reason the pre-order is invalid.

    Rules: orderId, customerId, customerEmail, customerTier, shipDate and items required;
    ids are non-empty strings (JSON integers accepted; sku and locationRef without ``|``,
    the key separator); every quantity a
    JSON integer in ``1..max_quantity``; every string at most ``max_text_length``
    characters; ``today + min_days_ahead ≤ shipDate ≤ today + max_days_ahead``;
    unknown tiers rejected or mapped to STANDARD per policy; with ``max_per_customer``
    the units of one SKU in this order may not exceed it (the book enforces it across
    orders).
    """
    if not isinstance(raw, Mapping):
        return ["pre-order must be a JSON object"]
    reasons: list[str] = []
    _check_lengths(raw, policy.max_text_length, reasons)
    order_id = _identifier(raw, "orderId", reasons)
    customer_id = _identifier(raw, "customerId", reasons)
    email = raw.get("customerEmail")
    if not isinstance(email, str) or "@" not in email or not email.strip():
        reasons.append("customerEmail is required (an e-mail address)")
        email = ""
    tier, requested_tier = _resolve_tier(raw.get("customerTier"), policy, reasons)
    ship_date = _parse_ship_date(raw.get("shipDate"))
    if ship_date is None:
        reasons.append("shipDate is required (an ISO date YYYY-MM-DD)")
    else:
        reasons.extend(ship_date_problems(ship_date, policy, today))
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        reasons.append("source must be a string")
        source = None
    items = _parse_items(raw.get("items"), policy, reasons)
    if policy.max_per_customer is not None:
        per_sku: dict[str, int] = {}
        for item in items:
            per_sku[item.sku] = per_sku.get(item.sku, 0) + item.quantity
        for sku, units in per_sku.items():
            if units > policy.max_per_customer:
                reasons.append(
                    f"sku {sku!r}: {units} units exceed max_per_customer "
                    f"({policy.max_per_customer})"
                )
    if reasons or ship_date is None:
        return reasons
    return PreOrder(
        order_id=order_id,
        customer_id=customer_id,
        customer_email=email.strip(),
        tier=tier,
        ship_date=ship_date,
        items=tuple(items),
        source=source or "",
        requested_tier=requested_tier,
    )


def parse_pre_order(raw: Any, policy: Policy, today: date) -> PreOrder:
    """Like :func:`validate_pre_order` but raises :class:`PreOrderInvalid`."""
    result = validate_pre_order(raw, policy, today)
    if isinstance(result, list):
        raise PreOrderInvalid(result)
    return result


def order_conflicts(order: PreOrder, recorded: Iterable[Mapping[str, Any]]) -> list[str]:
    """How ``order`` differs from the reservations already recorded under its orderId
    (``Reservation.to_dict`` shapes, any subset of its items); [] when it is the same
    order sent again. A resend must be the same content: another one is a conflict (409),
    never silently answered with the first order's result."""
    items = {item.index: item for item in order.items}
    problems: list[str] = []
    for seen in recorded:
        index = int(seen.get("itemIndex", -1))
        item = items.get(index)
        if item is None:
            problems.append(f"items[{index}] was placed before and is missing now")
            continue
        now = {"sku": item.sku, "location": item.location, "quantity": item.quantity,
               "shipDate": order.ship_date.isoformat(), "tier": order.tier,
               "customerId": order.customer_id}
        for name, value in now.items():
            if seen.get(name) != value:
                where = name if name in ("shipDate", "tier", "customerId") else f"items[{index}].{name}"
                problems.append(f"{where} was {seen.get(name)!r}, now {value!r}")
    return sorted(set(problems))


def pre_order_result(order_id: str, decisions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``pre-order-results`` value from the per-item reservation dicts of one order.

    ``success`` is true when every item is RESERVED or WAITLISTED (none rejected).
    """
    reserved: list[dict[str, Any]] = []
    waitlisted: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for decision in sorted(decisions, key=lambda d: int(d.get("itemIndex", 0))):
        status = decision.get("status")
        if status == "WAITLISTED":
            waitlisted.append(dict(decision))
        elif status == "REJECTED":
            failed.append(dict(decision))
        else:
            reserved.append(dict(decision))
    total = len(reserved) + len(waitlisted) + len(failed)
    message = f"{len(reserved)} of {total} item(s) reserved"
    if waitlisted:
        message += f", {len(waitlisted)} waitlisted"
    if failed:
        message += f", {len(failed)} rejected"
    return {
        "orderId": order_id,
        "success": total > 0 and not failed,
        "reservations": reserved,
        "waitlisted": waitlisted,
        "failedItems": failed,
        "message": message,
    }


def bump_exposure(tier: str, status: str, policy: Policy) -> dict[str, Any]:
    """What a customer may rely on: ``tierRank`` (1 = the highest tier) and
    ``provisional`` — a RESERVED item that a later arrival of a higher tier may still bump
    back to the waitlist (preemption and the waitlist on, and a tier above its own)."""
    score = policy.tier_scores.get(tier, 0)
    rank = 1 + len({s for s in policy.tier_scores.values() if s > score})
    exposed = (
        status == "RESERVED" and policy.priority_preemption and policy.waitlist_enabled
        and rank > 1
    )
    return {"tierRank": rank, "provisional": exposed}


def with_bump_exposure(body: Any, policy: Policy) -> Any:
    """``body`` with :func:`bump_exposure` added to every reservation in it (any depth)."""
    if isinstance(body, list):
        return [with_bump_exposure(item, policy) for item in body]
    if not isinstance(body, dict):
        return body
    out = {key: with_bump_exposure(value, policy) for key, value in body.items()}
    if "reservationId" in body and "status" in body and "tier" in body:
        out.update(bump_exposure(str(body["tier"]), str(body["status"]), policy))
    return out


def invalid_pre_order_result(order_id: str, reasons: Sequence[str]) -> dict[str, Any]:
    """The ``pre-order-results`` value of a pre-order that failed validation."""
    return {
        "orderId": order_id,
        "success": False,
        "reservations": [],
        "waitlisted": [],
        "failedItems": [{"reason": reason} for reason in reasons],
        "message": "invalid pre-order: " + "; ".join(reasons),
    }
