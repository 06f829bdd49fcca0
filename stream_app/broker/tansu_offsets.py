"""Correct the end offsets that the embedded Tansu broker reports, for Faust's table recovery.

Tansu 0.6.0 answers ``ListOffsets(latest)`` (aiokafka ``consumer.end_offsets``) with the
*last produce batch's base offset + 1* instead of the last record's offset + 1: three
single sends and then one batch of five records give an end offset of 4 while the records
are 0..7. Faust uses those end offsets as the changelog highwater of table recovery, so a
worker that takes over a partition either raises ``ConsistencyError`` (its persisted
offset is "higher than the last offset in that topic") or stops recovering before the real
end of the changelog and serves stale state.

The Fetch response's high watermark is right, and a fetch at the reported end returns the
whole last batch. :func:`probe_true_end_offsets` reads the true end that way with one
short-lived consumer for all partitions, and :func:`install_end_offset_correction` makes
one Faust app's consumer answer ``highwaters()`` with ``max(reported, true end)``.

Only install it when the app runs on the embedded broker: real Kafka needs nothing. On a
broker whose end offsets are already right, the correction changes no value (the probe
never lowers an offset); it only costs one short fetch per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP, ConsumerT

from stream_app.broker.consumers import on_worker_consumer

log = logging.getLogger(__name__)

#: Upper bound for one probe, connection and metadata included.
DEFAULT_PROBE_TIMEOUT = 10.0
#: How long the broker may hold a fetch that has nothing to return (empty partitions).
_FETCH_MAX_WAIT_MS = 100
#: Attribute set on an app (and on the object whose ``highwaters`` is wrapped).
WRAPPED_FLAG = "_stream_app_tansu_end_offsets"

HighwatersFn = Callable[..., Awaitable[Mapping[TP, int]]]


def bootstrap_list(bootstrap_servers: str) -> list[str]:
    """``host:port`` entries from ``host:port,…`` or a Faust URL (``kafka://h:p;h2:p``)."""
    servers: list[str] = []
    for part in bootstrap_servers.replace(";", ",").split(","):
        item = part.strip()
        if "://" in item:
            item = item.split("://", 1)[1]
        item = item.rstrip("/")
        if item:
            servers.append(item)
    if not servers:
        raise ValueError(f"no bootstrap server in {bootstrap_servers!r}")
    return servers


async def probe_true_end_offsets(
    bootstrap_servers: str,
    reported: dict[TopicPartition, int],
    *,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
) -> dict[TopicPartition, int]:
    """Return ``max(reported end, true end)`` for every partition of ``reported``.

    One consumer without a group is assigned all partitions and positioned at
    ``reported - 1`` (the start of the partition when ``reported`` is 0), so a single fetch
    returns the last batch of every non-empty partition and the broker's high watermark
    for every partition. The true end is the larger of that high watermark and the last
    fetched record's offset + 1. A partition the probe could not read within ``probe_timeout``
    keeps its reported value (with a warning): the probe never blocks for longer and never
    lowers an offset. A broker that cannot be reached at all raises aiokafka's
    ``KafkaConnectionError`` (:func:`corrected_end_offsets` turns that into "keep the
    reported offsets").
    """
    result = {TopicPartition(tp.topic, tp.partition): int(end) for tp, end in reported.items()}
    if not result:
        return result
    tps = list(result)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_list(bootstrap_servers),
        group_id=None,
        enable_auto_commit=False,
        # Position out of range (records deleted below reported - 1): read from the end.
        auto_offset_reset="latest",
        fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
        client_id="stream-app-end-offset-probe",
        request_timeout_ms=max(1000, int(probe_timeout * 1000)),
    )
    last_seen: dict[TopicPartition, int] = {}
    highwaters: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + probe_timeout
    try:
        async with asyncio.timeout(probe_timeout):
            await consumer.start()
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, max(result[tp] - 1, 0))
            while True:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                batch = await consumer.getmany(*tps, timeout_ms=max(0, min(200, remaining_ms)))
                for tp, records in batch.items():
                    if records:
                        last_seen[tp] = max(last_seen.get(tp, 0), records[-1].offset + 1)
                for tp in tps:
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        highwaters[tp] = hw
                if len(highwaters) == len(tps):
                    # The records of the response that set the last high watermark are
                    # already buffered: take them too, without waiting for a new fetch.
                    for tp, records in (await consumer.getmany(*tps, timeout_ms=0)).items():
                        if records:
                            last_seen[tp] = max(last_seen.get(tp, 0), records[-1].offset + 1)
                    break
    except TimeoutError:
        missing = sorted(set(tps) - set(highwaters))
        log.warning(
            "end-offset probe timed out after %.1fs; keeping the reported end offsets of %s",
            probe_timeout,
            missing,
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), timeout=5.0)
    for tp in tps:
        true_end = max(highwaters.get(tp, 0), last_seen.get(tp, 0))
        if true_end > result[tp]:
            log.info(
                "end offset of %s[%d] corrected from %d to %d (broker reported too little)",
                tp.topic,
                tp.partition,
                result[tp],
                true_end,
            )
            result[tp] = true_end
    return result


def _probe_in_own_loop(
    servers: str, reported: dict[TopicPartition, int], timeout: float
) -> dict[TopicPartition, int]:
    """Run the probe on a fresh event loop in the calling (worker) thread."""
    return asyncio.run(probe_true_end_offsets(servers, reported, probe_timeout=timeout))


async def corrected_end_offsets(
    bootstrap_servers: str,
    reported: Mapping[TP, int],
    *,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
) -> dict[TP, int]:
    """``reported`` with every end offset raised to the broker's true end.

    The probe runs in a worker thread on its own event loop, so it blocks neither the
    caller's loop nor Faust's consumer thread. Any failure leaves ``reported`` unchanged
    (logged): the correction can make recovery read further, never break it.
    """
    out: dict[TP, int] = dict(reported)
    keys = {
        tp: TopicPartition(tp.topic, tp.partition)
        for tp, end in reported.items()
        if end is not None
    }
    if not keys:
        return out
    ask = {keys[tp]: int(reported[tp]) for tp in keys}
    try:
        truth = await asyncio.to_thread(_probe_in_own_loop, bootstrap_servers, ask, probe_timeout)
    except Exception:
        log.warning("end-offset probe failed; using the reported end offsets", exc_info=True)
        return out
    for tp, key in keys.items():
        out[tp] = max(int(reported[tp]), truth.get(key, 0))
    return out


def _wrap_highwaters(app: faust.App, target: Any, servers: str, timeout: float) -> None:
    """Replace ``target.highwaters`` (an instance attribute) by the correcting version."""
    if getattr(target, WRAPPED_FLAG, False):
        return
    original: HighwatersFn = target.highwaters

    @functools.wraps(original)
    async def highwaters(*partitions: TP) -> Mapping[TP, int]:
        reported = await original(*partitions)
        if app.in_transaction:
            # exactly_once reads the last stable offset, not ListOffsets: leave it alone.
            return reported
        return await corrected_end_offsets(servers, reported, probe_timeout=timeout)

    setattr(target, "highwaters", highwaters)  # noqa: B010 - per instance, not the class
    setattr(target, WRAPPED_FLAG, True)  # noqa: B010


def _patch_consumer(app: faust.App, consumer: ConsumerT, servers: str, timeout: float) -> None:
    # The aiokafka driver's ThreadDelegateConsumer.highwaters delegates to its consumer
    # thread's highwaters(), which runs ``end_offsets`` on the thread's loop. Wrap that
    # method of this consumer's thread object (called from the app's loop), so the probe
    # runs next to it and never inside the consumer thread. Other drivers: wrap the
    # consumer's own highwaters().
    thread = getattr(consumer, "_thread", None)
    target: Any = thread if thread is not None and hasattr(thread, "highwaters") else consumer
    _wrap_highwaters(app, target, servers, timeout)


def install_end_offset_correction(
    app: faust.App,
    bootstrap_servers: str,
    *,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
) -> None:
    """Make ``app``'s Faust consumer report the embedded broker's true end offsets.

    Everything in Faust that asks for end offsets goes through ``Consumer.highwaters()``
    (table recovery: active and standby highwaters, hence the consistency check and the
    "recovery done" test). That call is wrapped for this app's consumer only, whether
    the consumer exists already or is created later; installing twice changes nothing.
    ``bootstrap_servers`` is ``host:port[,host:port]`` or the app's ``kafka://`` URL.
    """
    servers = ",".join(bootstrap_list(bootstrap_servers))
    if getattr(app, WRAPPED_FLAG, None) is not None:
        return
    setattr(app, WRAPPED_FLAG, servers)  # noqa: B010

    existing: ConsumerT | None = getattr(app, "_consumer", None)
    if existing is not None:
        _patch_consumer(app, existing, servers, probe_timeout)

    original_new_consumer: Callable[[], ConsumerT] = app._new_consumer

    def _new_consumer() -> ConsumerT:
        consumer = original_new_consumer()
        _patch_consumer(app, consumer, servers, probe_timeout)
        return consumer

    setattr(app, "_new_consumer", _new_consumer)  # noqa: B010 - this app instance only
    log.info("end-offset correction for the embedded broker installed (%s)", servers)


def tune_embedded_consumer(
    app: faust.App, max_wait_ms: int, prefetch_backoff_ms: float = 0
) -> None:
    """Make ``app``'s Faust consumer fetch with at most ``max_wait_ms`` of broker wait
    (> 0; 0 keeps Faust's) and use ``prefetch_backoff_ms`` (> 0; 0 keeps aiokafka's).

    Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500``; the embedded
    broker answers a fetch only when that wait is over, even when records arrived
    meanwhile, so every hop of the pipeline cost up to 1.5 s. This app instance only.

    ``prefetch_backoff_ms`` (> 0) replaces aiokafka's fixed 100 ms prefetch backoff: while
    one partition's fetched records wait to be consumed, aiokafka sends no fetch to that
    broker — for ANY partition — for up to that long. With one broker holding every
    topic, a partition Faust is slow to drain then delays all the others (measured here:
    per-hop p99 ~130 ms with 100 ms, ~60 ms with 2 ms).
    """
    if max_wait_ms <= 0 and prefetch_backoff_ms <= 0:
        return

    def created(_consumer: Any, client: Any) -> None:
        if max_wait_ms > 0:
            client._fetch_max_wait_ms = min(client._fetch_max_wait_ms, max_wait_ms)

    def started(_consumer: Any, client: Any) -> None:
        fetcher = getattr(client, "_fetcher", None)
        if prefetch_backoff_ms > 0 and hasattr(fetcher, "_prefetch_backoff"):
            fetcher._prefetch_backoff = prefetch_backoff_ms / 1000  # type: ignore[union-attr]

    on_worker_consumer(app, "_stream_app_consumer_tuned", created, started)


async def true_end_offsets(bootstrap_servers: str, tps: list[TP]) -> dict[TP, int]:
    """The end offsets of ``tps`` as the broker reports them, corrected by the probe (any
    broker; used before the worker starts, when no Faust consumer exists yet)."""
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_list(bootstrap_servers), group_id=None,
        enable_auto_commit=False, client_id="stream-app-end-offsets",
    )
    await consumer.start()
    try:
        known = consumer.partitions_for_topic  # only partitions that exist
        await consumer._client.force_metadata_update()
        wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps
                  if tp.partition in (known(tp.topic) or ())]
        reported = await consumer.end_offsets(wanted) if wanted else {}
    finally:
        await consumer.stop()
    as_tp = {TP(tp.topic, tp.partition): int(end) for tp, end in reported.items()}
    return await corrected_end_offsets(bootstrap_servers, as_tp)
