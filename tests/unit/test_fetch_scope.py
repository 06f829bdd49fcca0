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
