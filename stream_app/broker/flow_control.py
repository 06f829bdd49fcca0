"""Faust's flow control without the loss at the end of a recovery.

Faust (0.15.3) clears every stream queue whenever ``app.flow_control.resume()`` is called
(``mode.utils.queues.FlowControlEvent.resume``), also when the flow is already running.
That is right after a rebalance suspended the flow: what sits in the queues belongs to
the old assignment. It is wrong at the end of a recovery. There,
``Recovery.on_recovery_completed`` resumes the stream partitions, awaits the seek to the
committed offsets (the fetcher runs meanwhile and fills the queues with events of the
new assignment) and only then calls ``flow_control.resume()`` once more. The flow is
already running (it was resumed to read the changelogs), but the call still empties the
queues. The consumer's position has moved past those events, so they are never
delivered. Later events of the same partitions are delivered and acknowledged, and the
committed offset moves past the lost ones for good.

Seen here: a worker restarted with an empty table directory (so it reads its changelogs
at start-up) never processed two of the four release commands it fetched during that
window, and the release stalled.

:class:`ResumeClearsOnlyWhenSuspended` keeps Faust's behaviour where it is meant: a
``resume()`` after a ``suspend()`` clears the queues. A ``resume()`` while the flow is
already running changes nothing. Events of an older generation that could still be
queued are skipped by the stream itself (it compares generation ids).
"""

from __future__ import annotations

import faust
from mode.utils.queues import FlowControlEvent


class ResumeClearsOnlyWhenSuspended(FlowControlEvent):
    """A flow-control event whose ``resume()`` is a no-op when the flow is running."""

    def resume(self) -> None:
        if self.is_active():
            return
        super().resume()


def install_flow_control(app: faust.App) -> None:
    """Give ``app`` the flow control above. Call before any agent or topic exists (the
    stream queues register with the flow control when they are made)."""
    if "flow_control" in app.__dict__:
        current = app.__dict__["flow_control"]
        if isinstance(current, ResumeClearsOnlyWhenSuspended):
            return
        raise RuntimeError("install_flow_control must run before the app's flow control is used")
    app.__dict__["flow_control"] = ResumeClearsOnlyWhenSuspended()
    check_flow_control(app)


def check_flow_control(app: faust.App) -> None:
    """Fail loudly when the fix did not take (e.g. a Faust upgrade renamed things)."""
    control = app.flow_control
    if not isinstance(control, ResumeClearsOnlyWhenSuspended):
        raise RuntimeError(
            "stream_app.broker.flow_control: app.flow_control is not the patched event "
            f"({type(control).__name__}); this code was written for faust-streaming 0.15.3"
        )
    for name in ("_suspend", "_resume", "_queues"):
        if not hasattr(control, name):
            raise RuntimeError(
                f"stream_app.broker.flow_control: mode's FlowControlEvent has no {name}; this code "
                "was written for mode-streaming 0.7.1"
            )
