"""agents.result_waiters: how far decisions run behind, which makes POST /pre-orders shed."""

from __future__ import annotations

from agents.result_waiters import ResultWaiters


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_fresh_decision_lag_says_how_far_behind_and_a_stale_one_nothing() -> None:
    clock = Clock()
    waiters = ResultWaiters(lag_fresh_seconds=1.0, clock=clock)
    assert waiters.behind() == 0.0  # nothing decided, nobody waiting
    waiters.note_lag(3.5)  # the intake decided a pre-order 3.5 s after it arrived
    assert waiters.behind() == 3.5
    clock.now += 1.0
    assert waiters.behind() == 3.5
    clock.now += 0.5  # no decision since: caught up (or stopped; the waiting tell that)
    assert waiters.behind() == 0.0


async def test_the_oldest_request_still_waiting_counts_when_no_decision_comes() -> None:
    clock = Clock()
    waiters = ResultWaiters(clock=clock)
    first = waiters.expect("o-1")
    clock.now += 0.5
    second = waiters.expect("o-2")
    clock.now += 2.0
    assert waiters.behind() == 2.5  # o-1 has waited 2.5 s: the intake is not deciding
    waiters.forget("o-1", first)
    assert waiters.behind() == 2.0
    waiters.resolve_result("o-2", {"orderId": "o-2"})  # answered; the request forgets it
    assert second.done()
    waiters.forget("o-2", second)
    assert waiters.behind() == 0.0
    waiters.note_lag(0.2)
    assert waiters.behind() == 0.2
