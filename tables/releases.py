"""The ``release_runs`` table: per-partition release reports and the last scheduled release.

Keys (JSON strings), all written by the ``release-apply`` agent while it handles a command
of partition *p*, so they live in partition *p* of the changelog, owned by the worker that
owns the reservations they describe:

* ``run|<runId>|<p>`` → the report of one run on partition *p* (state, counts by tier and
  outcome, orders created/failed, failures, timings, attempts);
* ``last|<p>`` → ``{date, runId}`` of the last scheduled (nightly or catch-up) release that
  completed on partition *p*: what the start-up catch-up compares with the due date.

A view that shows a whole run asks every worker for the reports of its partitions
(``scope=local``) and merges them (:func:`stream_app.domain.release.merge_run_reports`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import faust
import orjson
from faust.types import TP, TableT

Json = dict[str, Any]

#: run reports kept per partition (older ones are deleted when a new run starts)
RUNS_KEPT = 200


def run_key(run_id: str, partition: int) -> str:
    return f"run|{run_id}|{partition}"


def last_key(partition: int) -> str:
    return f"last|{partition}"


class ReleaseRuns:
    def __init__(self, app: faust.App, table: TableT) -> None:
        self.app = app
        self.table = table

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def _load(self, key: str) -> Json | None:
        raw = self.table.get(key)
        return orjson.loads(raw) if raw else None

    # --- agent context (the command's partition is the partition written) ----------
    def part(self, run_id: str, partition: int) -> Json | None:
        return self._load(run_key(run_id, partition))

    def put_part(self, report: Json) -> None:
        self.table[run_key(str(report["runId"]), int(report["partition"]))] = orjson.dumps(report)

    def last_completed(self, partition: int) -> date | None:
        entry = self._load(last_key(partition))
        return date.fromisoformat(entry["date"]) if entry else None

    def set_last_completed(self, partition: int, day: date, run_id: str) -> None:
        current = self.last_completed(partition)
        if current is None or day > current:
            self.table[last_key(partition)] = orjson.dumps(
                {"date": day.isoformat(), "runId": run_id}
            )

    def prune(self, partition: int, keep: int = RUNS_KEPT) -> int:
        """Delete the oldest run reports of ``partition`` beyond ``keep``."""
        mine = sorted(
            (str(r.get("requestedAt") or ""), str(r["runId"]))
            for r in self.local_parts([partition])
        )
        stale = mine[: max(0, len(mine) - keep)]
        for _, run_id in stale:
            del self.table[run_key(run_id, partition)]
        return len(stale)

    # --- any context: this worker's partitions -----------------------------------
    def owned_partitions(self) -> list[int]:
        if self.app.consumer is None:
            return []
        topic = self.changelog_topic
        return sorted(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic)

    def owns(self, partition: int) -> bool:
        if self.app.consumer is None:
            return False
        return TP(self.changelog_topic, partition) in self.app.assignor.assigned_actives()

    def local_parts(self, partitions: list[int] | None = None) -> Iterator[Json]:
        """Run reports of the partitions this worker owns (or of ``partitions``)."""
        wanted = set(self.owned_partitions() if partitions is None else partitions)
        for key, raw in self.table.items():
            if not isinstance(key, str) or not key.startswith("run|") or not raw:
                continue
            if int(key.rsplit("|", 1)[1]) in wanted:
                yield orjson.loads(raw)


def define_release_table(app: faust.App, partitions: int) -> ReleaseRuns:
    table = app.Table(
        "release_runs",
        default=None,
        key_type=str,
        value_type=bytes,
        partitions=partitions,
        help="Release run reports per partition and the last scheduled release per partition",
    )
    return ReleaseRuns(app, table)
