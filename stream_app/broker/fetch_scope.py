"""Fetch only the partitions Faust consumes.

Faust pauses partitions *logically*: ``Consumer.pause_partitions`` takes them out of the
set it drains, but the aiokafka consumer underneath keeps them in every fetch request.
After recovery every active table's changelog partition is paused that way, so each fetch
listed them too (seen here: 66 partitions per fetch where 40 are consumed), and every
changelog write the worker made came back to it on the next fetch, was decoded, and sat
unconsumed in aiokafka's buffer. On the embedded broker a worker fetches ~100 times a
second; those partitions were a third of each fetch's encode/decode work, in the consumer
thread that shares the GIL with the agents.

:func:`fetch_consumed_only` makes the worker's aiokafka fetcher leave out the partitions
Faust has paused. Recovery is unchanged: Faust resumes a changelog partition while it
restores from it (and keeps standby partitions resumed), so those are fetched exactly
when Faust reads them. A resumed partition is fetched from the fetcher's next round (at
most aiokafka's ``fetcher_timeout``, 0.2 s, when nothing else was fetchable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

import faust

from stream_app.broker.consumers import on_worker_consumer

#: Faust's fetch checks that are false for a partition left out of fetches on purpose
_FETCH_ALARMS = ("has not sent fetch request for", "stopped fetching from")
_FAUST_CONSUMER_LOGGER = "faust.transport.drivers.aiokafka"


class PausedFetchAlarms(logging.Filter):
    """Faust checks each assigned partition's last fetch and logs an ERROR ("Aiokafka has
    not sent fetch request for TP since start", "stopped fetching from TP") when there is
    none: for the partitions this worker leaves out of its fetches on purpose (paused,
    :func:`fetch_consumed_only`) that is expected, so the record becomes DEBUG and an
    ERROR in the log means an error. The same alarm for a partition being consumed stays
    an ERROR. ``suppressed`` counts the downgraded ones."""

    def __init__(self, paused: Callable[[], Collection[Any]]) -> None:
        super().__init__()
        self.paused = paused
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.args:
            return True
        message = str(record.msg)
        if not any(alarm in message for alarm in _FETCH_ALARMS):
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        if args[0] not in self.paused():  # a consumed partition: a real alarm
            return True
        self.suppressed += 1
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_alarms(paused: Callable[[], Collection[Any]]) -> PausedFetchAlarms:
    """Install :class:`PausedFetchAlarms` on Faust's consumer logger (once)."""
    logger = logging.getLogger(_FAUST_CONSUMER_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, PausedFetchAlarms):
            existing.paused = paused
            return existing
    installed = PausedFetchAlarms(paused)
    logger.addFilter(installed)
    return installed


class ConsumedOnly:
    """An aiokafka assignment seen without the partitions in ``skip``."""

    __slots__ = ("_assignment", "_skip")

    def __init__(self, assignment: Any, skip: Collection[Any]) -> None:
        self._assignment = assignment
        self._skip = skip

    @property
    def tps(self) -> set[Any]:
        skip = self._skip
        return {tp for tp in self._assignment.tps if tp not in skip}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._assignment, name)


def scoped_actions(
    get_actions: Callable[[Any], Any], paused: Callable[[], Collection[Any]]
) -> Callable[[Any], Any]:
    """Wrap aiokafka's ``Fetcher._get_actions_per_node`` to skip ``paused()`` partitions."""

    def _get_actions_per_node(assignment: Any) -> Any:
        skip = paused()
        return get_actions(ConsumedOnly(assignment, skip) if skip else assignment)

    _get_actions_per_node.__wrapped__ = get_actions  # type: ignore[attr-defined]
    return _get_actions_per_node


def fetch_consumed_only(app: faust.App) -> None:
    """Make ``app``'s worker consumer fetch only partitions Faust has not paused.

    Idempotent; this app instance only. Works with any Kafka broker.
    """

    def started(consumer: Any, client: Any) -> None:
        fetcher: Any = getattr(client, "_fetcher", None)
        actions = getattr(fetcher, "_get_actions_per_node", None)
        if actions is None or hasattr(actions, "__wrapped__"):
            return
        if hasattr(consumer, "_paused_partitions"):
            # read in the consumer thread; Faust changes the set in the main thread (set
            # operations are atomic under the GIL, and a stale view costs one round)
            fetcher._get_actions_per_node = scoped_actions(
                actions, lambda: consumer._paused_partitions
            )
            quiet_alarms(lambda: consumer._paused_partitions)

    on_worker_consumer(app, "_stream_app_fetch_scoped", started=started)
