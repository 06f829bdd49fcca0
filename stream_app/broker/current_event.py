"""Writing a table as while processing an event: Faust's current-event context variable.

Faust routes a table write (store and changelog) by the *current event* of the stream
(``faust.streams._current_event``, private). A grouped intake (``take_ready``, like
``take_events``) has none in its body; :func:`writing_as` sets it. The variable is looked
up at import, so a Faust upgrade without it fails at start-up, not at the first pre-order.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import faust
import faust.streams as faust_streams


@contextlib.contextmanager
def writing_as(event: faust.types.EventT) -> Iterator[None]:
    """Table writes in this block go to ``event``'s partition, as while processing it.

    Faust routes a table write (store and changelog) by the *current event* of the
    stream, and a grouped intake (``take_ready``, like ``take_events``) has none in its
    body. The intake decides the items of partition *p* under an event it took from
    partition *p* of ``pre-orders``: Faust's co-partitioned assignment gives this worker
    the books of *p* with it.
    """
    token = _CURRENT_EVENT.set(weakref.ref(event))
    try:
        yield
    finally:
        _CURRENT_EVENT.reset(token)


# Faust's own context variable (faust/streams.py, 0.15.x): looked up at import so that a
# Faust upgrade without it fails at start-up, not at the first pre-order
if not isinstance(getattr(faust_streams, "_current_event", None), ContextVar):  # pragma: no cover
    raise ImportError(
        "this faust-streaming version has no faust.streams._current_event: "
        "stream_app.broker.current_event.writing_as needs it (pinned: faust-streaming 0.15.3)"
    )
_CURRENT_EVENT: ContextVar[Any] = faust_streams._current_event
