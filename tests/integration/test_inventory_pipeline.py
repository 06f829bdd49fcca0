"""The inventory pipeline against a real broker: a real worker process, events in, web view out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from stream_app.embedded import free_port
from tests.fixtures.kafka import KafkaCluster, consume, produce, topic_settings_env
from tests.fixtures.procs import ProcessFactory, StreamAppProcess, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Pipeline:
    worker: StreamAppProcess
    bootstrap: str
    topic: str
    dlq: str

    def send(self, *values: Any) -> None:
        produce(self.bootstrap, self.topic, list(values))

    def inventory(self, sku: str, location: str) -> tuple[int, Any]:
        return self.worker.get(f"/inventory/{sku}/{location}")

    def wait_inventory(self, sku: str, location: str, check: Any, what: str) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            status, body = self.inventory(sku, location)
            return body if status == 200 and check(body) else None

        return wait_for(ok, 30, 0.1, what)  # type: ignore[no-any-return]


def worker_env(kafka: KafkaCluster, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "STREAM_APP_KAFKA_BROKER": kafka.bootstrap,
        "STREAM_APP_APP_ID": prefix,
        "STREAM_APP_PARTITIONS": "4",
        "STREAM_APP_CHANNEL_BUFFERS": '{"MARKET": 7}',
        "STREAM_APP_MAX_EVENT_BYTES": "4096",
        "STREAM_APP_FLUENT_SIM_PORT": str(free_port()),
        **topic_settings_env(prefix),
        **extra,
    }


@pytest.fixture(scope="module")
def pipeline(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    import uuid

    prefix = f"inv-{uuid.uuid4().hex[:6]}"
    factory = ProcessFactory(tmp_path_factory.mktemp("inventory"))
    worker = factory.start("worker", factory.env(worker_env(kafka, prefix)))
    try:
        worker.wait_ready(90)
        yield Pipeline(worker, kafka.bootstrap, f"{prefix}-inventory-changes", f"{prefix}-inventory-changes-dlq")
    finally:
        factory.stop_all()


def stock(event_id: str, channel: str, on_hand: Any, reserved: Any, updated: str, **kw: Any) -> dict[str, Any]:
    return {
        "eventId": event_id, "channel": channel, "sku": kw.pop("sku", "SKU-1"),
        "location": kw.pop("location", "LOC-1"), "onHand": on_hand, "reserved": reserved,
        "updatedAt": updated, **kw,
    }


def test_channel_aggregation_late_duplicate_and_dead_letter(pipeline: Pipeline) -> None:
    a = stock("a1", "A", 100, 20, "2026-11-20T10:00:00Z", buffer=5)
    b = stock("b1", "B", "95", "15", "2026-11-20T10:00:00Z", buffer=5)
    pipeline.send(a, b)
    body = pipeline.wait_inventory("SKU-1", "LOC-1", lambda b: b["atp"] == 155, "atp 155")
    assert body["totalOnHand"] == 195 and body["totalReserved"] == 35 and body["buffer"] == 5
    assert set(body["channels"]) == {"A", "B"}

    late = stock("a0", "A", 1, 0, "2026-11-20T09:00:00Z")  # older than a1
    duplicate = dict(a)
    marker = stock("m1", "C", 10, 0, "2026-11-20T10:00:00Z", sku="SKU-M")
    pipeline.send(late, duplicate, b"{not json", marker)
    pipeline.wait_inventory("SKU-M", "LOC-1", lambda b: b["atp"] == 10, "marker applied")
    body = pipeline.inventory("SKU-1", "LOC-1")[1]
    assert body["atp"] == 155 and body["channels"]["A"]["onHand"] == 100

    dead = consume(pipeline.bootstrap, pipeline.dlq, lambda rs: any(r.value == b"{not json" for r in rs), raw=True)
    record = next(r for r in dead if r.value == b"{not json")
    headers = dict(record.headers)
    assert headers["dlq-reason"].startswith(b"not JSON")
    assert headers["dlq-source-topic"] == pipeline.topic.encode()


def test_batch_envelope_each_record_alone(pipeline: Pipeline) -> None:
    envelope = {
        "records": [
            stock("e1", "WMS", 40, 0, "2026-11-20T10:00:00Z", sku="SKU-E"),
            stock("e2", "MARKET", 10, 2, "2026-11-20T10:00:00Z", sku="SKU-E"),  # default buffer 7
            {"eventId": "e3", "channel": "WMS", "sku": "SKU-E", "location": "LOC-1", "onHand": -1,
             "reserved": 0, "updatedAt": "2026-11-20T10:00:00Z"},
            {"eventId": "po1", "type": "EXPECTED", "ref": "PO-1", "sku": "SKU-E", "location": "LOC-1",
             "quantity": 30, "expectedOn": "2026-12-24", "updatedAt": "2026-11-20T10:00:00Z"},
        ]
    }
    pipeline.send(envelope)
    body = pipeline.wait_inventory("SKU-E", "LOC-1", lambda b: len(b["channels"]) == 2 and b["expectedArrivals"], "envelope")
    assert body["buffer"] == 7 and body["atp"] == 50 - 2 - 7
    assert body["expectedArrivals"] == [{"ref": "PO-1", "quantity": 30, "expectedOn": "2026-12-24"}]
    dead = consume(pipeline.bootstrap, pipeline.dlq, lambda rs: any(b"e3" in r.value for r in rs), raw=True)
    bad = next(r for r in dead if b"e3" in r.value)
    assert orjson.loads(bad.value)["onHand"] == -1
    assert b"negative" in dict(bad.headers)["dlq-reason"]

    # a later PO update with quantity 0 removes it; an older one does not bring it back
    pipeline.send(
        {"eventId": "po2", "type": "EXPECTED", "ref": "PO-1", "sku": "SKU-E", "location": "LOC-1",
         "quantity": 0, "expectedOn": "2026-12-24", "updatedAt": "2026-11-20T11:00:00Z"},
        {"eventId": "po0", "type": "EXPECTED", "ref": "PO-1", "sku": "SKU-E", "location": "LOC-1",
         "quantity": 99, "expectedOn": "2026-12-24", "updatedAt": "2026-11-20T09:00:00Z"},
    )
    pipeline.wait_inventory("SKU-E", "LOC-1", lambda b: b["expectedArrivals"] == [], "PO removed")


def test_channel_removal_recomputes(pipeline: Pipeline) -> None:
    pipeline.send(
        stock("r1", "A", 10, 0, "2026-11-20T10:00:00Z", sku="SKU-R"),
        stock("r2", "B", 20, 0, "2026-11-20T10:00:00Z", sku="SKU-R"),
        stock("r3", "C", 30, 0, "2026-11-20T10:00:00Z", sku="SKU-R"),
    )
    pipeline.wait_inventory("SKU-R", "LOC-1", lambda b: b["atp"] == 60, "three channels")
    pipeline.send(
        stock("r4", "A", 0, 0, "2026-11-20T11:00:00Z", sku="SKU-R"),
        {"eventId": "r5", "type": "DELETE", "channel": "B", "sku": "SKU-R", "location": "LOC-1",
         "updatedAt": "2026-11-20T11:00:00Z"},
        stock("r6", "B", 500, 0, "2026-11-20T10:30:00Z", sku="SKU-R"),  # older than the delete
    )
    body = pipeline.wait_inventory("SKU-R", "LOC-1", lambda b: b["atp"] == 30, "removed")
    assert list(body["channels"]) == ["C"]


def test_every_kind_of_bad_event_is_dead_lettered(pipeline: Pipeline) -> None:
    bad: list[bytes] = [
        b"[1, 2]",
        orjson.dumps({"eventId": "x1", "channel": "A", "sku": "S", "location": "L", "onHand": 1}),
        orjson.dumps(stock("x2", "A", "ten", 0, "2026-11-20T10:00:00Z")),
        orjson.dumps(stock("x3", "A", 1, 0, "yesterday")),
        orjson.dumps({**stock("x4", "A", 1, 0, "2026-11-20T10:00:00Z"), "type": "TELEPORT"}),
        orjson.dumps({**stock("x5", "A", 1, 0, "2026-11-20T10:00:00Z"), "pad": "x" * 5000}),
    ]
    pipeline.send(*bad, stock("ok1", "A", 3, 0, "2026-11-20T10:00:00Z", sku="SKU-OK"))
    pipeline.wait_inventory("SKU-OK", "LOC-1", lambda b: b["atp"] == 3, "good event after bad ones")
    dead = consume(
        pipeline.bootstrap, pipeline.dlq,
        lambda rs: all(any(r.value == v for r in rs) for v in bad), raw=True,
    )
    reasons = {r.value: dict(r.headers)["dlq-reason"].decode() for r in dead if r.value in bad}
    assert "not a JSON object" in reasons[bad[0]]
    assert "updatedAt" in reasons[bad[1]] or "reserved" in reasons[bad[1]]
    assert "not a number" in reasons[bad[2]]
    assert "timestamp" in reasons[bad[3]]
    assert "unknown type" in reasons[bad[4]]
    assert "exceeds" in reasons[bad[5]]


def test_unknown_key_is_404_with_json(pipeline: Pipeline) -> None:
    status, body = pipeline.inventory("NOPE", "NOWHERE")
    assert status == 404 and body["error"] == "not_found"


def test_health_reports_ready(pipeline: Pipeline) -> None:
    status, body = pipeline.worker.health()
    assert status == 200 and body["ready"] is True and body["partitions"] == [0, 1, 2, 3]


def test_the_worker_checked_its_faust_patches_at_start_up(pipeline: Pipeline) -> None:
    wait_for(lambda: "Faust/aiokafka patches checked: all in effect"
             in pipeline.worker.log_path.read_text(), 30, 0.2, "the patch check in the log")


def test_metrics_and_dashboard(pipeline: Pipeline) -> None:
    pipeline.send(stock("met1", "A", 1, 0, "2026-11-20T10:00:00Z", sku="SKU-MET"), b"garbage")
    pipeline.wait_inventory("SKU-MET", "LOC-1", lambda b: b["atp"] == 1, "metric event applied")
    lines = pipeline.worker.metrics()
    assert lines["stream_app_inventory_records_applied_total"] >= 1
    assert lines[f'stream_app_dead_letters_total{{topic="{pipeline.topic}"}}'] >= 1
    assert lines["stream_app_ready"] == 1.0
    assert lines['stream_app_table_keys{table="inventory"}'] >= 1  # RocksDB's estimate
    assert lines['stream_app_agent_crashes_total{agent="internal"}'] == 0
    status, html = pipeline.worker.get("/")
    assert status == 200 and "<title>stream-app" in html and "/sync" in html


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_of_a_librdkafka_producer_is_applied(
    pipeline: Pipeline, codec: str
) -> None:
    """Bytes as a non-Python client writes them: confluent-kafka (librdkafka) with each
    Kafka codec, a header and a null key; the event is applied, nothing dead-lettered."""
    from confluent_kafka import Producer as RdKafkaProducer

    producer = RdKafkaProducer({
        "bootstrap.servers": pipeline.bootstrap,
        "compression.type": codec,
        "linger.ms": 5,
        "enable.idempotence": False,
    })
    sku = f"CODEC-{codec}"
    events = [
        stock(f"{codec}-{i}", "WMS", 10 + i, 0, f"2026-11-20T10:00:{i:02d}Z", sku=sku)
        for i in range(20)  # several records: a real compressed batch
    ]
    for event in events:
        producer.produce(
            pipeline.topic, value=orjson.dumps(event), key=None,
            headers=[("source", b"librdkafka")],
        )
    assert producer.flush(30) == 0, "librdkafka did not deliver"
    pipeline.wait_inventory(sku, "LOC-1", lambda b: b["totalOnHand"] == 29, f"{codec} applied")
