"""Channel connectors: S3 CSV drops and REST pollers into ``inventory-changes``.

Data path (one channel)::

    channels file --> poller (one task, on the worker owning the channel's partition)
        S3: list prefix --> ranged GET from the checkpoint --> chunks --> csv_segments.cut
            (rows -> RowMapper -> envelopes, in a parse process) --> segments
        REST: RestPoller pages --> map_row
      --> envelopes {"records": [...]} on inventory-changes (delivered, then)
      --> a "channel-progress" message on <app>-internal, partition of the channel
      --> internal agent --> channel_state table (checkpoints, processed files, cursors)

* **Exactly one active poller per channel**: the channel's name picks a partition of
  ``channel_state``; the worker holding that partition (active) runs the poller. A
  rebalance stops it here and starts it there, from the table's checkpoint.
* **Nothing lost, nothing twice**: a checkpoint (byte offset, line, counts) is published
  only after the envelopes before it are on the broker, and each row's event id is
  ``s3:<channel>:<etag>:<line>``: a poller killed mid-file resumes at its last
  checkpoint and re-sends at most one envelope, which the inventory apply recognises
  (same event, same timestamp: no change). A file is identified by its content (ETag):
  once ``ingested``, the same content dropped again is archived without ingesting.
* **Rejected rows** (with their line numbers and reasons) are written, per checkpoint,
  as parts beside the archive and gathered into ``<archive>/<name>.rejections.json``
  when the file is done; then the file is marked ingested, then archived (copy, delete).
* **A poller reads what it (or the owner before it) checkpointed**: before each poll it
  sends a fence through its partition of the internal topic and waits until the internal
  agent applies it (:meth:`ChannelsService.fence`): every checkpoint on the broker before
  it is then in ``channel_state``. Without it a poller started after a kill or a
  rebalance could read a checkpoint the agent had not re-applied yet and send again what
  the lost one covered (or ingest a file marked ingested a second time).
* **The worker's loop stays free**: a file's rows are parsed, mapped and encoded as
  envelopes by :func:`stream_app.connectors.csv_segments.cut` in a parse process beside
  the worker (``STREAM_APP_CHANNEL_PARSE_PROCESSES``; spawned, not forked); the loop only
  publishes and checkpoints. The parse process watches its worker and ends when it is
  gone (kill -9 included); one that dies is replaced and the poll resumes at the checkpoint.
* Progress (file, rows done, rejected, last poll, errors) is this module's
  :meth:`ChannelsService.status`, served by ``GET /channels``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from agents.channel_files import ParseError, Parser, ingest_file
from agents.internal import CHANNEL_PROGRESS, json_handler
from stream_app.app import need
from stream_app.broker.delivery import deliver
from stream_app.broker.lifecycle import is_ready
from stream_app.connectors.config import ChannelsFile, RestChannel, S3Channel, load_channels
from stream_app.connectors.csv_rows import CsvFormatError
from stream_app.connectors.rest import RestChannelError, RestPoller
from stream_app.connectors.s3_files import (
    S3ChannelError,
    list_objects,
)
from stream_app.exports import ExportError, S3Config, s3_client
from stream_app.records import Limits
from tables.keyed import KeyedTable

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]
ERRORS_KEPT = 20


class FenceTimeout(Exception):
    """The internal agent did not apply a channel's fence in time (it is behind)."""


def poll_key(channel: str) -> str:
    return f"poll|{channel}"


def merge_progress(old: Json | None, new: Json) -> Json:
    """A checkpoint never goes back: ``ingested`` stays, a smaller offset is stale (an old
    owner's late message after a rebalance)."""
    if old is None:
        return new
    if old.get("status") == "ingested" and new.get("status") != "ingested":
        return old
    if new.get("status") != "ingested" and new.get("offset", 0) < old.get("offset", 0):
        return old
    return new


class ChannelStatus:
    """What ``GET /channels`` shows of one channel on this worker."""

    def __init__(self, channel: S3Channel | RestChannel) -> None:
        self.channel = channel
        self.active = False
        self.file: Json | None = None  # the file in progress
        self.files_ingested = 0
        self.duplicates_skipped = 0
        self.rows_total = 0
        self.rejected_total = 0
        self.last_poll: str | None = None
        self.last_success: str | None = None
        self.errors: deque[Json] = deque(maxlen=ERRORS_KEPT)
        self.rest: Json | None = None

    def error(self, message: str, at: str) -> None:
        self.errors.append({"at": at, "error": message})

    def view(self) -> Json:
        ch = self.channel
        where = (
            {"bucket": ch.bucket, "prefix": ch.prefix, "archivePrefix": ch.archive_prefix}
            if isinstance(ch, S3Channel)
            else {"url": ch.url}
        )
        return {
            "name": ch.name,
            "kind": ch.kind,
            "enabled": ch.enabled,
            "active": self.active,
            **where,
            "pollIntervalSeconds": ch.poll_interval_seconds,
            "file": self.file,
            "filesIngested": self.files_ingested,
            "duplicatesSkipped": self.duplicates_skipped,
            "rowsDone": self.rows_total,
            "rejected": self.rejected_total,
            "lastPoll": self.last_poll,
            "lastSuccess": self.last_success,
            "rest": self.rest,
            "errors": list(self.errors),
            "lastError": self.errors[-1] if self.errors else None,
        }


class ChannelsService:
    """The configured channels, their pollers on this worker and their progress."""

    def __init__(
        self,
        runtime: Runtime,
        table: KeyedTable,
        config: ChannelsFile,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.runtime = runtime
        self.table = table
        self.config = config
        self.clock = clock
        self.status = {ch.name: ChannelStatus(ch) for ch in config.channels}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.limits = Limits(max_quantity=runtime.settings.max_quantity)
        self.session: aiohttp.ClientSession | None = None
        self.fence_timeout = runtime.settings.channel_fence_timeout_seconds
        self.max_record_bytes = runtime.settings.csv_max_record_bytes
        self._fences: dict[str, asyncio.Future[None]] = {}
        self.parser = Parser(runtime.settings.channel_parse_processes)

    @classmethod
    def from_settings(cls, runtime: Runtime, table: KeyedTable) -> ChannelsService:
        path = runtime.settings.channels_file
        return cls(runtime, table, load_channels(path) if path else ChannelsFile())

    def now(self) -> str:
        return self.clock().astimezone(UTC).isoformat().replace("+00:00", "Z")

    # --- ownership -------------------------------------------------------------------
    def partition_of(self, name: str) -> int:
        return self.table.partition_of(name)

    def owned(self) -> list[S3Channel | RestChannel]:
        app = self.runtime.app
        if app.consumer is None or not is_ready(app):
            return []
        topic = self.table.changelog_topic
        mine = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
        return [
            ch for ch in self.config.channels if ch.enabled and self.partition_of(ch.name) in mine
        ]

    def supervise(self) -> None:
        """Start the pollers of the channels this worker owns, stop the others."""
        wanted = {ch.name: ch for ch in self.owned()}
        for name, task in list(self.tasks.items()):
            if name not in wanted or task.done():
                task.cancel()
                del self.tasks[name]
                self.status[name].active = False
        for name, channel in wanted.items():
            if name not in self.tasks:
                self.status[name].active = True
                runner = self.run_s3 if isinstance(channel, S3Channel) else self.run_rest
                self.tasks[name] = asyncio.create_task(runner(channel), name=f"channel-{name}")  # type: ignore[arg-type]

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None
        self.parser.close()

    # --- publishing ------------------------------------------------------------------
    async def publish_records(self, channel: str, records: list[Json]) -> None:
        """One envelope, without a key (spread over the partitions: the apply orders a
        key's records by (updatedAt, eventId), not by arrival; a file's zero-padded line
        numbers make its later row of a key win a tie)."""
        if records:
            await self.publish_envelope(orjson.dumps({"records": records}))

    async def publish_envelope(self, body: bytes) -> None:
        """An envelope already encoded (a CSV segment's, built where it was parsed)."""
        await deliver(self.runtime.app, [(self.runtime.names.inventory_changes, None, body, None, None)])

    async def checkpoint(self, channel: str, key: str, value: Json) -> None:
        """Record progress (after what it covers is on the broker)."""
        topic = self.runtime.names.internal
        body = orjson.dumps({"key": key, "value": value})
        partition = self.partition_of(channel)
        await deliver(self.runtime.app, [(topic, CHANNEL_PROGRESS, body, partition, None)])

    async def fence(self, channel: str) -> None:
        """Return once the internal agent has applied every checkpoint of ``channel``
        published before now: a fence message through the channel's partition comes back
        after them (one partition, one order). :class:`FenceTimeout` after
        ``channel_fence_timeout_seconds``."""
        nonce = f"{channel}:{uuid.uuid4().hex}"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fences[nonce] = waiter
        try:
            topic = self.runtime.names.internal
            body = orjson.dumps({"fence": nonce})
            partition = self.partition_of(channel)
            await deliver(self.runtime.app, [(topic, CHANNEL_PROGRESS, body, partition, None)])
            try:
                await asyncio.wait_for(waiter, self.fence_timeout)
            except TimeoutError:
                raise FenceTimeout(
                    f"channel {channel}: its checkpoints on the broker were not applied within "
                    f"{self.fence_timeout:g}s (the internal agent is behind); polling later"
                ) from None
        finally:
            self._fences.pop(nonce, None)

    def apply_progress(self, message: Json, partition: int) -> None:
        if "fence" in message:  # a poller's fence: what was before it is applied
            waiter = self._fences.get(message["fence"])  # another worker's, or an old one: None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        key, value = message["key"], message["value"]
        if not isinstance(key, str) or not isinstance(value, dict):
            raise ValueError("channel progress needs a string key and an object value")
        self.table.put(key, merge_progress(self.table.get(key, partition), value), partition)

    # --- S3 --------------------------------------------------------------------------
    def s3_config(self, channel: S3Channel) -> S3Config:
        """The export's S3 settings (endpoint, region, credentials) on the channel's bucket."""
        return replace(S3Config.from_settings(self.runtime.settings), bucket=channel.bucket, prefix="")

    async def run_s3(self, channel: S3Channel) -> None:
        """Poll the prefix with ONE client for as long as it works (a client per poll
        loaded botocore's S3 model every few seconds); a failure opens a new one."""
        status = self.status[channel.name]
        cfg = self.s3_config(channel)
        while True:
            try:
                async with s3_client(cfg) as client:
                    while True:
                        status.last_poll = self.now()
                        await self.fence(channel.name)
                        for obj in await list_objects(
                            client, cfg, channel.prefix, channel.archive_prefix
                        ):
                            await ingest_file(self, client, cfg, channel, obj)
                        status.last_success = self.now()
                        await asyncio.sleep(channel.poll_interval_seconds)
            except (S3ChannelError, ExportError, CsvFormatError, FenceTimeout, ParseError) as exc:
                log.warning("channel %s: %s", channel.name, exc)
                status.error(str(exc), self.now())
            except Exception as exc:  # a bug: say so, keep the poller alive
                log.exception("channel %s: poll failed", channel.name)
                status.error(f"{type(exc).__name__}: {exc}", self.now())
            await asyncio.sleep(channel.poll_interval_seconds)

    # --- REST ------------------------------------------------------------------------
    async def run_rest(self, channel: RestChannel) -> None:
        status = self.status[channel.name]
        if self.session is None:
            self.session = aiohttp.ClientSession()
        poller = RestPoller(channel, session=self.session, limits=self.limits)
        dlq = self.runtime.names.inventory_changes_dlq
        key = poll_key(channel.name)
        while True:
            status.last_poll = self.now()
            try:
                await self.fence(channel.name)
                state = self.table.get(key, self.partition_of(channel.name)) or {}
                async for page in poller.poll(state):
                    await self.publish_records(channel.name, page.records)
                    if page.rejected:
                        letters = [
                            (
                                dlq,
                                channel.name.encode(),
                                orjson.dumps(item.get("record")),
                                None,
                                [
                                    ("dlq-reason", "; ".join(item["reasons"]).encode()[:1000]),
                                    ("dlq-source-channel", channel.name.encode()),
                                ],
                            )
                            for item in page.rejected
                        ]
                        await deliver(self.runtime.app, letters)
                    await self.checkpoint(channel.name, key, dict(page.state))
                    status.rows_total += len(page.records) + len(page.rejected)
                    status.rejected_total += len(page.rejected)
                status.last_success = self.now()
            except (RestChannelError, FenceTimeout) as exc:
                log.warning("channel %s: %s", channel.name, exc)
                status.error(str(exc), self.now())
            except Exception as exc:  # a bug: say so, keep the poller alive
                log.exception("channel %s: poll failed", channel.name)
                status.error(f"{type(exc).__name__}: {exc}", self.now())
            status.rest = poller.stats
            await asyncio.sleep(channel.poll_interval_seconds)


def register(runtime: Runtime) -> None:
    app = runtime.app
    service = need(runtime.channels, "the channels service")
    internal_dlq = runtime.topic(runtime.names.internal_dlq)

    runtime.internal_handlers.channel_progress = json_handler(
        internal_dlq, "channel progress", service.apply_progress, service.table
    )

    if not service.config.channels:
        return

    @app.timer(1.0)
    async def supervise_channels() -> None:
        service.supervise()

    @app.task
    async def close_on_stop() -> None:
        """Holds until the worker stops, then stops the pollers and closes their session."""
        try:
            await asyncio.Event().wait()
        finally:
            await service.close()
