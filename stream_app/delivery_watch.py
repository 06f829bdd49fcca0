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
    observers: list[Observer] = field(default_factory=list)
    #: bytes of an original a dead letter keeps (``STREAM_APP_DEAD_LETTER_MAX_BYTES``)
    dead_letter_max_bytes: int = 65536
    #: "topic[partition]" → each wait in progress there (token → loop time it started):
    #: one stream may wait on several things at once (a commit and the next delivery,
    #: two tables' flushes), and the end of one must not hide the others
    _waits: dict[str, dict[object, float]] = field(default_factory=dict)

    def begin(self, where: str, now: float) -> object:
        """Note a wait for the broker at ``where``; returns the token :meth:`end` takes."""
        token = object()
        self._waits.setdefault(where, {})[token] = now
        return token

    def end(self, where: str, token: object) -> None:
        waits = self._waits.get(where)
        if waits is not None:
            waits.pop(token, None)
            if not waits:
                del self._waits[where]

    @property
    def waiting(self) -> dict[str, float]:
        """Streams waiting for the broker → loop time the oldest of their waits started."""
        return {where: min(waits.values()) for where, waits in self._waits.items()}

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
