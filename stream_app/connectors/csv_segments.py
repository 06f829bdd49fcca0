"""A CSV file's rows cut into segments (an envelope of good records, the rejected rows,
and where the segment ends), one chunk at a time: the one pure step between the bytes of
an S3 object and what the channel publishes.

:func:`cut` takes the state a file's previous chunk left and the next chunk (None at the
file's end) and gives back the new state and the segments the chunk completed. State and
segments are plain data that pickle, so the step runs in a parse process beside the
worker (``STREAM_APP_CHANNEL_PARSE_PROCESSES``) or, with 0 processes, in the worker's
loop; the answer is the same either way. The parse process's own set-up
(:func:`leave_interrupts_to_the_worker`) is here too: the process imports this module and
what it needs, not the worker's flows.

A segment ends after ``envelope_records`` good or rejected rows, counted from where the
file's read began (its checkpoint), never at a chunk's edge: however the bytes come,
a resumed read cuts the same segments again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_app.connectors.csv_rows import CsvSplitter
from stream_app.connectors.mapping import FieldMapping, RowMapper
from stream_app.records import Limits

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Segment:
    """Rows up to byte ``end`` (the next row on ``next_line``): ``body`` the envelope of
    the ``good`` records (None when there is none), ``bad`` the rejected rows."""

    body: bytes | None
    good: int
    bad: list[Json]
    end: int
    next_line: int


@dataclass(slots=True)
class FileCut:
    """A file's parse between two chunks; ``error`` once the file cannot be read on."""

    splitter: CsvSplitter
    mapping: FieldMapping
    channel: str
    event_prefix: str  # a row's event id is this and its zero-padded line number
    modified: str  # the updatedAt of a row without one: the object's LastModified
    size: int
    delimiter: str = ","
    envelope_records: int = 500
    limits: Limits = field(default_factory=Limits)
    header: list[str] | None = None
    next_line: int = 1  # the line after the last record read
    good: list[Json] = field(default_factory=list)
    bad: list[Json] = field(default_factory=list)
    error: str | None = None


def cut(state: FileCut, chunk: bytes | None) -> tuple[FileCut, list[Segment]]:
    """Feed ``chunk`` (None: the file ended) to ``state``; the segments it completed."""
    splitter = state.splitter
    records = splitter.feed(chunk, state.delimiter) if chunk is not None else splitter.end(state.delimiter)
    mapper = None if state.header is None else _mapper(state, state.header)
    segments: list[Segment] = []
    good, bad, most = state.good, state.bad, state.envelope_records
    for record in records:
        state.next_line = record.next_line
        if mapper is None:
            if record.error is not None:
                state.error = f"the header (line {record.line}) is {record.error}"
                return state, segments
            header = [name.strip() for name in record.fields]
            missing = sorted(state.mapping.columns() - set(header))
            if missing:
                state.error = f"the header has no column {', '.join(missing)} (line {record.line})"
                return state, segments
            state.header, mapper = header, _mapper(state, header)
            continue
        if record.error is not None:  # not in the file's encoding: a rejected row
            bad.append({"line": record.line, "reasons": [record.error], "row": record.fields[:50]})
        elif len(record.fields) != len(mapper.header):
            reasons = [f"{len(record.fields)} fields where the header has {len(mapper.header)}"]
            bad.append({"line": record.line, "reasons": reasons, "row": record.fields[:50]})
        else:
            mapped, reasons = mapper.map(
                record.fields, event_id=f"{state.event_prefix}{record.line:012d}",
                default_updated_at=state.modified,
            )
            if mapped is not None:
                good.append(mapped)
            else:
                bad.append({"line": record.line, "reasons": reasons,
                            "row": dict(zip(mapper.header, record.fields, strict=True))})
        if len(good) >= most or len(bad) >= most:
            segments.append(_segment(good, bad, record.end, record.next_line))
            good, bad = [], []
    if chunk is None and (good or bad):
        segments.append(_segment(good, bad, state.size, state.next_line))
        good, bad = [], []
    state.good, state.bad = good, bad
    return state, segments


def _mapper(state: FileCut, header: list[str]) -> RowMapper:
    return RowMapper(state.mapping, header, channel=state.channel, limits=state.limits)


def _segment(good: list[Json], bad: list[Json], end: int, next_line: int) -> Segment:
    body = orjson.dumps({"records": good}) if good else None
    return Segment(body, len(good), bad, end, next_line)


def leave_interrupts_to_the_worker(worker_pid: int, every: float = 0.5) -> None:
    """A parse process's set-up. Ctrl-C reaches the whole process group, and the worker
    stops its pool, so the parse process does not die of it with a traceback of its own.
    And it ends when its worker is gone, also after a kill -9: a pool's process waits on
    a queue it holds both ends of, so it would never see its worker go."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == worker_pid:
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()
