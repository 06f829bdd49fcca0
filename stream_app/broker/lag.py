"""Consumer lag of one worker, from what Faust already tracks (no broker round trip).

Per source topic partition this worker consumes: the end offset the consumer last saw
(``Consumer.highwater``) minus the next offset to read (the monitor's last read offset + 1,
or the committed offset before anything was read). Changelogs and Faust's assignor topic
are left out: they are not work waiting. O(assigned partitions).
"""

from __future__ import annotations

import contextlib
from typing import Any


def consumer_lag(app: Any) -> dict[tuple[str, int], int]:
    if app.consumer is None:
        return {}
    read = app.monitor.tp_read_offsets
    committed = app.monitor.tp_committed_offsets
    lag: dict[tuple[str, int], int] = {}
    for tp in app.assignor.assigned_actives():
        if tp.topic.endswith("-changelog") or "__assignor" in tp.topic:
            continue
        with contextlib.suppress(Exception):  # not fetched yet / going away: no figure
            end = app.consumer.highwater(tp)
            done = read.get(tp)
            position = done + 1 if done is not None else committed.get(tp, end)
            if end is not None:
                lag[(tp.topic, tp.partition)] = max(0, int(end) - int(position))
    return lag


def lag_by_topic(app: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for (topic, _partition), behind in consumer_lag(app).items():
        out[topic] = out.get(topic, 0) + behind
    return out
