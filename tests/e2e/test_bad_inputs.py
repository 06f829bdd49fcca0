"""Poison inputs among valid ones, through a real worker: every valid event is applied,
every bad one is in the dead-letter topic with its reason (cut to a bounded prefix when
large), the counters match what the topic holds, and a stream whose outputs the broker
refuses shows in ``/health``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer as RdKafkaProducer

from stream_app.bootstrap import ensure_topics
from stream_app.embedded import EmbeddedBroker, free_port
from tests.fixtures.kafka import KafkaCluster, consume, produce
from tests.fixtures.procs import ProcessFactory, wait_for
from tests.integration.test_inventory_pipeline import stock, worker_env

pytestmark = pytest.mark.e2e


def now_iso(offset: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + offset).isoformat().replace("+00:00", "Z")


def test_poison_events_are_dead_lettered_with_reasons_and_every_valid_one_is_applied(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    prefix = f"bad-{uuid.uuid4().hex[:6]}"
    topic, dlq = f"{prefix}-inventory-changes", f"{prefix}-inventory-changes-dlq"
    factory = ProcessFactory(tmp_path)
    try:
        # the product's default limits (1 MB events, 64 KiB dead letters)
        worker = factory.start("worker", factory.env(worker_env(
            kafka, prefix, STREAM_APP_MAX_EVENT_BYTES="1000000",
        )))
        worker.wait_ready(90)
        valid = [stock(f"ok-{i}", "WMS", 10 + i, 1, now_iso(), sku=f"SKU-P{i}") for i in range(30)]
        huge = orjson.dumps({**stock("huge", "WMS", 1, 0, now_iso(), sku="SKU-H"),
                             "pad": "x" * 2_000_000})
        poison: list[tuple[str, bytes]] = [  # (what its reason says, its bytes)
            ("onHand' exceeds the largest quantity",
             orjson.dumps(stock("p-1e308", "WMS", 1e308, 0, now_iso(), sku="SKU-X"))),
            ("reserved' exceeds the largest quantity",
             orjson.dumps(stock("p-big", "WMS", 1, 2**40, now_iso(), sku="SKU-X"))),
            ("ahead of the message timestamp",
             orjson.dumps(stock("p-2099", "WMS", 5, 0, "2099-01-01T00:00:00Z", sku="SKU-P0"))),
            ("longer than 256 characters",
             orjson.dumps(stock("p-long", "WMS", 1, 0, now_iso(), sku="S" * 300))),
            ("exceeds 1000000 bytes", huge),
        ]
        stale = stock("stale", "WMS", 999, 0, now_iso(timedelta(hours=-1)), sku="SKU-P1")
        messages: list[tuple[str, bytes]] = []
        for i, event in enumerate(valid):
            messages.append((event["sku"], orjson.dumps(event)))
            if i % 6 == 0:
                messages.append(("poison", poison[i // 6][1]))
        # keyed by SKU: the stale and the duplicate come after the event they repeat
        messages += [("SKU-P1", orjson.dumps(stale)), ("SKU-P2", orjson.dumps(valid[2]))]
        producer = RdKafkaProducer({"bootstrap.servers": kafka.bootstrap,
                                    "message.max.bytes": 3_000_000, "enable.idempotence": False})
        for key, raw in messages:
            producer.produce(topic, value=raw, key=key.encode())
        assert producer.flush(30) == 0

        for event in valid:
            wait_for(lambda e=event: worker.get(f"/inventory/{e['sku']}/LOC-1")[1].get("totalOnHand")  # type: ignore[misc]
                     == e["onHand"], 60, 0.1, f"{event['sku']} applied")
        # the channel pinned by 2099 is not: a later, honest update of it is applied
        produce(kafka.bootstrap, topic, [stock("after-2099", "WMS", 77, 0, now_iso(), sku="SKU-P0")])
        wait_for(lambda: worker.get("/inventory/SKU-P0/LOC-1")[1].get("totalOnHand") == 77, 30, 0.1,
                 "an update after a far-future one")

        dead = consume(kafka.bootstrap, dlq, lambda rs: len(rs) >= len(poison), raw=True)
        assert len(dead) == len(poison), [dict(r.headers)["dlq-reason"] for r in dead]
        by_reason = {dict(r.headers)["dlq-reason"].decode(): r for r in dead}
        for expected, _ in poison:
            assert any(expected in reason for reason in by_reason), (expected, list(by_reason))
        cut = next(r for reason, r in by_reason.items() if "bytes exceeds" in reason)
        headers = dict(cut.headers)
        assert len(cut.value) == 65536 and headers["dlq-truncated"] == b"true"
        assert headers["dlq-original-bytes"] == str(len(huge)).encode()
        assert headers["dlq-original-sha256"] == hashlib.sha256(huge).hexdigest().encode()
        assert cut.value == huge[:65536]

        def counted() -> dict[str, float] | None:
            found = worker.metrics()
            return found if found.get(f'stream_app_dead_letters_total{{topic="{topic}"}}') == len(dead) else None

        found = wait_for(counted, 30, 0.2, "the dead-letter counter matching the topic")
        assert found['stream_app_inventory_records_not_applied_total{reason="stale"}'] >= 1
        assert found['stream_app_inventory_records_not_applied_total{reason="duplicate"}'] >= 1
        assert worker.get("/inventory/SKU-P1/LOC-1")[1]["totalOnHand"] == 11  # not the stale 999
    finally:
        factory.stop_all()


def test_a_stream_whose_outputs_are_refused_turns_health_not_ready_with_the_reason(
    tmp_path: Path,
) -> None:
    """Its own broker, frozen (SIGSTOP) while the worker is forwarding a backlog: the
    forwards time out, the stream stalls (nothing skipped), ``/health`` says which stream
    after ``STREAM_APP_STALL_SECONDS``, and everything is applied once the broker thaws."""
    log = tmp_path / "broker.log"
    broker = EmbeddedBroker(port=free_port(), log_path=log).start()
    cluster = KafkaCluster(bootstrap=broker.bootstrap, kind="embedded")
    prefix = f"stall-{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}-inventory-changes"
    factory = ProcessFactory(tmp_path)
    frozen = False
    try:
        at = now_iso()
        events: list[Any] = [
            stock(f"s-{i}", "WMS", i % 97, 0, at, sku=f"SKU-S{i % 500}") for i in range(150_000)
        ]
        # the backlog is on the broker before the worker starts: it is still forwarding it
        # when the broker freezes, however fast ingest is
        asyncio.run(ensure_topics(cluster.bootstrap, [topic], 4))
        producer = RdKafkaProducer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 20})
        for event in events:  # keyed: the last event of a SKU is its final state
            producer.produce(topic, value=orjson.dumps(event), key=event["sku"].encode())
            producer.poll(0)
        assert producer.flush(60) == 0
        worker = factory.start("worker", factory.env(worker_env(
            cluster, prefix, STREAM_APP_STALL_SECONDS="2", STREAM_APP_INGEST_BATCH_MAX="50",
        )))
        wait_for(lambda: worker.metrics().get("stream_app_inventory_records_total", 0) > 0,
                 90, 0.05, "ingest started")
        assert worker.metrics()["stream_app_inventory_records_total"] < len(events) / 2
        assert broker._proc is not None
        os.kill(broker._proc.pid, signal.SIGSTOP)
        frozen = True

        def stalled() -> dict[str, Any] | None:
            status, body = worker.health()
            ingest = [w for w in body.get("stalled", {}) if w.startswith(f"{topic}[")]
            return body if status == 503 and ingest else None

        body = wait_for(stalled, 90, 0.2, "/health naming the stalled inventory stream")
        assert "outputs not taken by the broker" in body["reason"]
        os.kill(broker._proc.pid, signal.SIGCONT)
        frozen = False
        last: dict[str, tuple[str, int]] = {}
        for event in events:  # same updatedAt: the event id decides (last writer wins)
            known = last.get(event["sku"])
            if known is None or event["eventId"] > known[0]:
                last[event["sku"]] = (event["eventId"], event["onHand"])
        wait_for(lambda: worker.health()[0] == 200, 120, 0.5, "ready again after the thaw")
        for sku in ("SKU-S0", "SKU-S499", "SKU-S250"):
            wait_for(lambda s=sku: worker.get(f"/inventory/{s}/LOC-1")[1].get("totalOnHand")  # type: ignore[misc]
                     == last[s][1], 120, 0.2, f"{sku} at its last value")
    finally:
        if frozen and broker._proc is not None:
            os.kill(broker._proc.pid, signal.SIGCONT)
        factory.stop_all()
        broker.stop()
