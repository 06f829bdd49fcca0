"""The fetch scope: aiokafka's fetch planning sees the assignment without paused
partitions (the wiring into a real consumer is tested against the broker in
tests/integration/test_tansu_offsets.py)."""

from __future__ import annotations

from typing import Any

from aiokafka.structs import TopicPartition
from faust.types import TP

from stream_app.broker.fetch_scope import ConsumedOnly, scoped_actions


class Assignment:
    def __init__(self, tps: set[TopicPartition]) -> None:
        self.tps = tps
        self.active = True

    def state_value(self, tp: TopicPartition) -> str:
        return f"state of {tp.topic}/{tp.partition}"


def test_paused_partitions_are_left_out_and_the_rest_is_delegated() -> None:
    source, changelog = TopicPartition("orders", 0), TopicPartition("app-t-changelog", 0)
    seen: list[Any] = []
    paused: set[Any] = {TP("app-t-changelog", 0)}  # Faust's own tuple type
    plan = scoped_actions(lambda a: seen.append(a) or sorted(a.tps), lambda: paused)
    assert plan(Assignment({source, changelog})) == [source]
    assert seen[0].state_value(source) == "state of orders/0" and seen[0].active
    paused.clear()  # resumed (e.g. recovery reads it): fetched again
    assert plan(Assignment({source, changelog})) == sorted({source, changelog})
    assert not isinstance(seen[1], ConsumedOnly)  # nothing paused: the assignment itself


def test_fetch_alarms_for_paused_partitions_are_not_errors() -> None:
    import logging

    from stream_app.broker.fetch_scope import PausedFetchAlarms

    paused = {TP("app-inventory-changelog", 0)}
    alarms = PausedFetchAlarms(lambda: paused)
    template = "[^--AIOKafkaConsumerThread]: Aiokafka has not sent fetch request for %r since start (started %s)"

    def record(tp: Any, level: int = logging.ERROR, msg: str = template) -> logging.LogRecord:
        return logging.LogRecord("faust.transport.drivers.aiokafka", level, __file__, 1, msg,
                                 (tp, "5 minutes ago"), None)

    quiet = record(TopicPartition("app-inventory-changelog", 0))  # aiokafka's tp equals Faust's
    assert alarms.filter(quiet) is False and quiet.levelno == logging.DEBUG
    real = record(TP("app-inventory-changes", 3))  # consumed and not fetched: an error
    assert alarms.filter(real) is True and real.levelno == logging.ERROR
    other = record(TP("app-inventory-changelog", 0), msg="something else for %r (%s)")
    assert alarms.filter(other) is True and other.levelno == logging.ERROR
    assert alarms.suppressed == 1
