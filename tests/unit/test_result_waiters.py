"""agents.result_waiters: how far decisions run behind, which makes POST /pre-orders shed."""

from __future__ import annotations

import pytest

from agents.result_waiters import ResultWaiters


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_decisions_late_one_after_another_say_how_far_behind_a_stale_lag_nothing() -> None:
    clock = Clock()
    waiters = ResultWaiters(lag_fresh_seconds=1.0, clock=clock)
    assert waiters.behind() == 0.0  # nothing decided, nobody waiting
    for _ in range(60):  # a backlog: every decision 3.5 s after its pre-order arrived
        waiters.note_lag(3.5)
    assert waiters.behind() == pytest.approx(3.5, abs=0.01)
    clock.now += 1.0
    assert waiters.behind() == pytest.approx(3.5, abs=0.01)
    clock.now += 0.5  # no decision since: caught up (or stopped: the waiting tell that)
    assert waiters.behind() == 0.0
    waiters.note_lag(0.05)  # a new stretch starts from nothing
    assert waiters.behind() == pytest.approx(0.005)


async def test_one_slow_decision_is_not_a_queue() -> None:
    clock = Clock()
    waiters = ResultWaiters(clock=clock)
    waiters.note_lag(1.5)  # the first decision after start-up, say
    assert waiters.behind() < 0.2
    for _ in range(5):
        waiters.note_lag(0.05)
    assert waiters.behind() < 0.2


async def test_the_oldest_request_waiting_for_its_decision_counts_when_none_comes() -> None:
    clock = Clock()
    waiters = ResultWaiters(clock=clock)
    first = waiters.expect("o-1")
    second = waiters.expect("o-2")
    clock.now += 3.0  # expected but still publishing: not waiting for a decision yet
    assert waiters.behind() == 0.0
    waiters.waiting(first)
    clock.now += 0.5
    waiters.waiting(second)
    clock.now += 2.0
    assert waiters.behind() == 2.5  # o-1 has waited 2.5 s: the intake is not deciding
    waiters.forget("o-1", first)
    assert waiters.behind() == 2.0
    waiters.resolve_result("o-2", {"orderId": "o-2"})  # answered; the request forgets it
    assert second.done()
    waiters.forget("o-2", second)
    assert waiters.behind() == 0.0
