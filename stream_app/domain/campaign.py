"""The campaign view of one SKU/location: what an operator watches on launch night.

Per ship date: the overbooking limit, units held, future ATP, queue depth, and the
reservations by tier and status (``BUMPED``: waitlisted now after a higher tier took their
place, as far as their kept history tells). Pure: the reservation book, the supply and the
waitlist switch in, a JSON-safe dict out; cost O(reservations of this SKU/location).
"""

from __future__ import annotations

from typing import Any

from stream_app.domain.book import ReservationBook
from stream_app.domain.future_atp import Supply, atp_response
from stream_app.domain.model import EventType, Status


def campaign_view(book: ReservationBook, supply: Supply, waitlist_enabled: bool) -> dict[str, Any]:
    by_date: dict[str, dict[str, Any]] = {}
    for reservation in book.reservations():
        day = by_date.setdefault(reservation.ship_date.isoformat(), {"byTier": {}, "units": {}})
        status = str(reservation.status)
        tier = day["byTier"].setdefault(reservation.tier, {})
        tier[status] = tier.get(status, 0) + 1
        day["units"][status] = day["units"].get(status, 0) + reservation.quantity
        if reservation.status is Status.WAITLISTED and any(
            entry[2] == EventType.BUMPED for entry in reservation.history
        ):
            tier["BUMPED"] = tier.get("BUMPED", 0) + 1
    held = book.held_by_date()
    dates = []
    for ship_date in book.ship_dates():
        day = by_date.get(ship_date.isoformat(), {"byTier": {}, "units": {}})
        atp = atp_response(supply, held, ship_date, 1, waitlist_enabled)
        counts = day["units"]
        dates.append({
            "shipDate": ship_date.isoformat(),
            "overbookingLimit": atp["overbookingLimit"],
            "heldUnits": atp["existingReservations"],
            "availableToPromise": atp["availableToPromise"],
            "depth": sum(tier.get(Status.RESERVED, 0) + tier.get(Status.WAITLISTED, 0)
                         for tier in day["byTier"].values()),
            "byTier": day["byTier"],
            "units": counts,
        })
    return {
        "sku": book.sku,
        "location": book.location,
        "currentInventory": supply.current_atp,
        "overbookingRate": supply.overbooking_rate,
        "shipDates": dates,
    }
