"""The flow control that keeps events queued at the end of a recovery."""

from __future__ import annotations

import asyncio

import pytest
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from stream_app.app import create_faust_app
from stream_app.broker import patches
from stream_app.broker.flow_control import (
    ResumeClearsOnlyWhenSuspended,
    check_flow_control,
    install_flow_control,
)
from stream_app.settings import Settings


def queue_of(control: FlowControlEvent) -> FlowControlQueue[int]:
    return FlowControlQueue(maxsize=10, flow_control=control, clear_on_resume=True)


def test_faust_s_own_event_drops_queued_events_on_a_second_resume() -> None:
    """The loss being fixed, shown on mode's class (fails if mode stops doing it)."""

    async def run() -> int:
        control = FlowControlEvent()
        queue = queue_of(control)
        control.resume()
        queue.put_nowait(1)
        control.resume()  # what Recovery.on_recovery_completed does
        return queue.qsize()

    assert asyncio.run(run()) == 0


def test_a_resume_while_running_keeps_the_queued_events() -> None:
    async def run() -> list[int]:
        control = ResumeClearsOnlyWhenSuspended()
        queue = queue_of(control)
        control.resume()
        queue.put_nowait(1)
        queue.put_nowait(2)
        control.resume()
        return [queue.get_nowait() for _ in range(queue.qsize())]

    assert asyncio.run(run()) == [1, 2]


def test_a_resume_after_a_suspend_still_clears() -> None:
    async def run() -> tuple[int, bool]:
        control = ResumeClearsOnlyWhenSuspended()
        queue = queue_of(control)
        control.resume()
        queue.put_nowait(1)  # of the old assignment
        control.suspend()
        suspended = not control.is_active()
        control.resume()
        return queue.qsize(), suspended

    assert asyncio.run(run()) == (0, True)


def test_the_app_gets_it_and_the_start_up_check_sees_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, app_id="flow-check")
    app = create_faust_app(settings)
    patches.install(app, settings)
    assert isinstance(app.flow_control, ResumeClearsOnlyWhenSuspended)
    check_flow_control(app)
    install_flow_control(app)  # idempotent
    assert isinstance(app.flow_control, ResumeClearsOnlyWhenSuspended)


def test_the_check_fails_loudly_without_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import faust

    app = faust.App("flow-unpatched", autodiscover=False, datadir=str(tmp_path))
    with pytest.raises(RuntimeError, match="faust-streaming 0.15.3"):
        check_flow_control(app)
    with pytest.raises(RuntimeError, match="before the app's flow control is used"):
        install_flow_control(app)
