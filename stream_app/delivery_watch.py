"""What deliveries do, per app: streams waiting for the broker, dead letters delivered.

:func:`stream_app.broker.delivery.deliver` records here; ``/health``, ``/metrics`` and the dead-letter
counter read it (a neutral module, so web views need not import agents).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: (topic name, key, value, partition or None, headers or None)
Message = tuple[str, bytes | None, bytes | None, int | None, Any]

Observer = Callable[[Sequence[Message]], None]


@dataclass
class DeliveryWatch:
    #: "topic[partition]" of a stream waiting for the broker → loop time it started
    waiting: dict[str, float] = field(default_factory=dict)
    observers: list[Observer] = field(default_factory=list)
    #: bytes of an original a dead letter keeps (``STREAM_APP_DEAD_LETTER_MAX_BYTES``)
    dead_letter_max_bytes: int = 65536

    def stalls(self, now: float, at_least: float) -> dict[str, float]:
        """Streams waiting for the broker for ``at_least`` seconds or more → seconds."""
        return {where: now - since for where, since in self.waiting.items() if now - since >= at_least}


_ATTRIBUTE = "_stream_app_delivery_watch"


def watch_of(app: Any) -> DeliveryWatch:
    """The app's watch (kept on the app instance: it lives and dies with it)."""
    found: DeliveryWatch | None = getattr(app, _ATTRIBUTE, None)
    if found is None:
        found = DeliveryWatch()
        setattr(app, _ATTRIBUTE, found)
    return found
