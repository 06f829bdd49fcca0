"""One CSV file of an S3 channel, from its checkpoint to its archive (:mod:`agents.channels`
draws the data path and says why nothing is lost or ingested twice).

:func:`ingest_file` reads the object from the checkpoint's byte offset (ranged GET), maps
each row, and per envelope: sends the good records, writes the rejected rows as a part
beside the archive, then publishes the checkpoint. At the end it gathers the parts into
the rejection report, marks the file ingested, deletes the parts and archives the file.

The parts are found by listing their prefix (``<archive>.rejections.parts/<etag>/``), not
kept in the checkpoint: a checkpoint stays the same size however many rows a file rejects.
A segment after a checkpoint is cut the same way again after a restart (by counts from
the checkpoint's offset), so a part written before a kill is written again under its own
name, never beside a second copy.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from stream_app.connectors.config import S3Channel
from stream_app.connectors.csv_rows import CsvSplitter
from stream_app.connectors.csv_segments import (
    FileCut,
    Segment,
    cut,
    leave_interrupts_to_the_worker,
)
from stream_app.connectors.s3_files import (
    S3Object,
    archive,
    delete_keys,
    get_json,
    list_keys,
    put_json,
    read_from,
)
from stream_app.exports import S3Config

if TYPE_CHECKING:
    from agents.channels import ChannelsService

log = logging.getLogger(__name__)

#: envelopes of one file on their way to the broker at once
PIPELINE_DEPTH = 8

Json = dict[str, Any]


class Checkpoints:
    """A file's checkpoints, sent in order and coalesced: one send at a time, always of
    the newest progress handed over (:meth:`covering`), so the file's pace is not one
    checkpoint round trip per envelope. A wait ends once a checkpoint at or past its
    offset is on the broker; a failed send fails every wait it covered."""

    def __init__(self, send: Callable[[Json], Awaitable[None]]) -> None:
        self._send = send
        self._wanted: Json | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Future[None] | None = None
        self.sent = 0  # checkpoints sent (for tests: fewer than segments under load)

    def covering(self, progress: Json) -> asyncio.Future[None]:
        """Send ``progress`` (or a newer one); the future is done once it is durable."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((int(progress["offset"]), waiter))
        self._wanted = progress
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return waiter

    async def _run(self) -> None:
        while self._wanted is not None:
            progress, self._wanted = self._wanted, None
            try:
                await self._send(progress)
            except BaseException as exc:
                for _, waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                self._waiters.clear()
                self._wanted = None
                if not isinstance(exc, Exception):
                    raise
                return
            self.sent += 1
            durable = int(progress["offset"])
            keep = []
            for offset, waiter in self._waiters:
                if offset <= durable:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    keep.append((offset, waiter))
            self._waiters = keep


class Parser:
    """Runs :func:`~stream_app.connectors.csv_segments.cut` in ``processes`` parse
    processes (spawned on the first file, so a worker without S3 channels starts none)
    or, with 0, in the worker's loop. A pool whose process died is replaced; the file's
    poll fails with :class:`ParseError` and the next poll resumes at its checkpoint."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    async def cut(self, state: FileCut, chunk: bytes | None) -> tuple[FileCut, list[Segment]]:
        if self.processes == 0:
            return cut(state, chunk)
        if self._pool is None:
            # spawn, not fork: the worker has threads (the consumer's, the executor's)
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=context, initializer=leave_interrupts_to_the_worker,
                initargs=(os.getpid(),),
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, cut, state, chunk)
        except BrokenProcessPool as exc:
            self.close()
            raise ParseError(f"the CSV parse process died ({exc}); resuming at the checkpoint") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class ParseError(RuntimeError):
    """The parse process of a file went away."""


def file_key(channel: str, etag: str) -> str:
    return f"file|{channel}|{etag}"


def archive_key(channel: S3Channel, key: str) -> str:
    name = key[len(channel.prefix) :] if key.startswith(channel.prefix) else key
    return f"{channel.archive_prefix}{name}"


def parts_prefix(channel: S3Channel, obj: S3Object) -> str:
    """Where the rejected rows of ``obj`` wait for the report, one part per segment."""
    return f"{archive_key(channel, obj.key)}.rejections.parts/{obj.etag}/"


async def ingest_file(
    service: ChannelsService, client: Any, cfg: S3Config, channel: S3Channel, obj: S3Object
) -> None:
    status = service.status[channel.name]
    key = file_key(channel.name, obj.etag)
    progress = service.table.get(key, service.partition_of(channel.name)) or {}
    if progress.get("status") == "ingested":
        if progress.get("key") != obj.key or progress.get("size") != obj.size:
            status.duplicates_skipped += 1
            log.info(
                "channel %s: %s holds what %s held (ingested): archived, not ingested",
                channel.name,
                obj.key,
                progress.get("key"),
            )
        # a kill after the file was marked ingested: its parts may be left (the report has them)
        await delete_keys(client, cfg, await list_keys(client, cfg, parts_prefix(channel, obj)))
        await archive(client, cfg, obj, archive_key(channel, obj.key))
        return
    if not progress:
        progress = {
            "key": obj.key,
            "etag": obj.etag,
            "size": obj.size,
            "offset": 0,
            "line": 1,
            "header": None,
            "good": 0,
            "rejected": 0,
            "status": "ingesting",
            "startedAt": service.now(),
        }
    status.file = {
        "key": obj.key,
        "size": obj.size,
        "rowsDone": progress["good"] + progress["rejected"],
        "rejected": progress["rejected"],
        "offset": progress["offset"],
    }
    file_error = await _read_rows(service, client, cfg, channel, obj, key, progress)
    await _finish(service, client, cfg, channel, obj, key, progress, file_error)
    status.file = None
    status.files_ingested += 1


async def _read_rows(
    service: ChannelsService,
    client: Any,
    cfg: S3Config,
    channel: S3Channel,
    obj: S3Object,
    key: str,
    progress: Json,
) -> str | None:
    status = service.status[channel.name]
    state = FileCut(
        CsvSplitter(encoding=channel.encoding, start=progress["offset"], first_line=progress["line"],
                    max_record_bytes=service.max_record_bytes),
        channel.mapping, channel.name, event_prefix=f"s3:{channel.name}:{obj.etag}:",
        modified=obj.modified_iso, size=obj.size, delimiter=channel.delimiter,
        envelope_records=channel.envelope_records, limits=service.limits,
        header=progress["header"], next_line=progress["line"],
    )
    in_flight: deque[asyncio.Future[None]] = deque()  # segments handed over, oldest first
    ordered: list[asyncio.Future[None] | None] = [None]  # the newest segment's turn in order
    checkpoints = Checkpoints(lambda value: service.checkpoint(channel.name, key, value))

    async def commit(
        segment: Segment, header: list[str] | None,
        previous: asyncio.Future[None] | None, turn: asyncio.Future[None],
    ) -> None:
        """The envelope (and the rejections part) on the broker (and S3), then, after the
        previous segment's turn, this segment's progress; it is done once a checkpoint
        covering it is on the broker: a checkpoint never covers a row that is not on the
        broker, and checkpoints are sent in file order."""
        bad = segment.bad
        try:
            part = None
            if bad:
                part = f"{parts_prefix(channel, obj)}{bad[0]['line']:012d}.json"
            await asyncio.gather(
                service.publish_envelope(segment.body) if segment.body else asyncio.sleep(0),
                put_json(client, cfg, part, bad) if part else asyncio.sleep(0),
            )
            if previous is not None:
                await previous
            progress.update(
                offset=segment.end, line=segment.next_line, good=progress["good"] + segment.good,
                rejected=progress["rejected"] + len(bad), header=header,
            )
            snapshot = dict(progress)
        except BaseException as exc:
            turn.set_exception(exc)
            turn.exception()  # retrieved: the segment's own failure is what is raised
            raise
        turn.set_result(None)
        await checkpoints.covering(snapshot)
        status.rows_total += segment.good + len(bad)
        status.rejected_total += len(bad)
        status.file = {
            "key": obj.key, "size": obj.size, "offset": segment.end,
            "rowsDone": progress["good"] + progress["rejected"], "rejected": progress["rejected"],
        }

    async def save(segment: Segment, header: list[str] | None) -> None:
        """Hand the segment over; parsing goes on while the broker takes up to
        ``PIPELINE_DEPTH`` segments (the worker's loop is busy applying them: one round
        trip at a time would bound the file by the loop's latency, not by its work)."""
        if len(in_flight) >= PIPELINE_DEPTH:
            await in_flight.popleft()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        in_flight.append(asyncio.ensure_future(commit(segment, header, ordered[0], turn)))
        ordered[0] = turn

    chunks = aiter(read_from(client, cfg, obj, progress["offset"]))
    parsing: asyncio.Future[tuple[FileCut, list[Segment]]] | None = None
    try:
        chunk = await anext(chunks, None)
        parsing = asyncio.ensure_future(service.parser.cut(state, chunk))
        while True:
            state, segments = await parsing
            if state.error is not None:
                return state.error
            last = chunk is None
            if not last:  # the next chunk parses while this one's segments go out
                chunk = await anext(chunks, None)
                parsing = asyncio.ensure_future(service.parser.cut(state, chunk))
            for segment in segments:
                await save(segment, state.header)
            if last:
                break
    finally:
        if parsing is not None:
            if not parsing.done():
                parsing.cancel()
            elif not parsing.cancelled():
                parsing.exception()  # retrieved: a failure of its own is not the one raised
        while in_flight:
            await in_flight.popleft()
    if progress["offset"] < obj.size:  # trailing blank lines, or a header alone
        await save(Segment(None, 0, [], obj.size, state.next_line), state.header)
        await in_flight.popleft()
    return None if state.header is not None else "the file is empty (no header)"


async def _finish(
    service: ChannelsService,
    client: Any,
    cfg: S3Config,
    channel: S3Channel,
    obj: S3Object,
    key: str,
    progress: Json,
    file_error: str | None,
) -> None:
    rejections: list[Json] = []
    # a checkpoint of an earlier version kept its parts' names (under the old prefix)
    parts = [*progress.get("parts", ()), *await list_keys(client, cfg, parts_prefix(channel, obj))]
    for part in parts:
        if len(rejections) < channel.max_rejections_kept:
            rejections.extend(await get_json(client, cfg, part))
    report_key = f"{archive_key(channel, obj.key)}.rejections.json"
    report = {
        "channel": channel.name,
        "source": f"s3://{cfg.bucket}/{obj.key}",
        "etag": obj.etag,
        "archivedAs": f"s3://{cfg.bucket}/{archive_key(channel, obj.key)}",
        "rows": progress["good"] + progress["rejected"],
        "accepted": progress["good"],
        "rejected": progress["rejected"],
        "fileError": file_error,
        "rejectionsShown": min(len(rejections), channel.max_rejections_kept),
        "rejections": rejections[: channel.max_rejections_kept],
        "startedAt": progress.get("startedAt"),
        "finishedAt": service.now(),
    }
    await put_json(client, cfg, report_key, report)
    done = {
        **progress,
        "status": "ingested",
        "finishedAt": report["finishedAt"],
        "report": report_key,
        "fileError": file_error,
    }
    done.pop("parts", None)
    await service.checkpoint(channel.name, key, done)
    await delete_keys(client, cfg, parts)
    await archive(client, cfg, obj, archive_key(channel, obj.key))
    if file_error:
        service.status[channel.name].error(f"{obj.key}: {file_error}", service.now())
    log.info(
        "channel %s: %s ingested (%d rows, %d rejected) and archived",
        channel.name,
        obj.key,
        report["rows"],
        report["rejected"],
    )
