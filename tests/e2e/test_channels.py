"""Channel connectors through real processes: a CSV dropped in S3 (moto server on loopback)
lands in ATP and in Fluent (the simulator), with a rejection report, once; a worker killed
with SIGKILL mid-file loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from agents.channel_files import PIPELINE_DEPTH
from stream_app.connectors.rest import derived_event_id
from stream_app.embedded import free_port
from tests.fixtures.kafka import KafkaCluster, consume
from tests.fixtures.procs import ProcessFactory, StreamAppProcess, alive, children, wait_for
from tests.fixtures.s3 import DUMMY_KEY_ID, DUMMY_SECRET, REGION
from tests.fixtures.simproc import Sim, start_sim, worker_env

pytestmark = pytest.mark.e2e

CHANNEL = "WMS-CSV"


class Bucket:
    def __init__(self, server: str) -> None:
        self.server = server
        self.name = f"drops-{uuid.uuid4().hex[:8]}"
        self._run(lambda c: c.create_bucket(Bucket=self.name))

    def _run(self, call: Any) -> Any:
        async def main() -> Any:
            session = aioboto3.Session(
                aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET, region_name=REGION
            )
            async with session.client("s3", endpoint_url=self.server) as client:
                return await call(client)

        return asyncio.run(main())

    def put(self, key: str, body: bytes) -> None:
        self._run(lambda c: c.put_object(Bucket=self.name, Key=key, Body=body))

    def keys(self) -> list[str]:
        async def listing(c: Any) -> list[str]:
            resp = await c.list_objects_v2(Bucket=self.name)
            return [o["Key"] for o in resp.get("Contents", [])]

        return self._run(listing)  # type: ignore[no-any-return]

    def json(self, key: str) -> Any:
        async def read(c: Any) -> Any:
            resp = await c.get_object(Bucket=self.name, Key=key)
            async with resp["Body"] as body:
                return json.loads(await body.read())

        return self._run(read)


def channels_file(tmp_path: Path, bucket: str, envelope: int = 500) -> Path:
    path = tmp_path / f"channels-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"channels": [{
        "name": CHANNEL, "kind": "s3", "bucket": bucket, "prefix": "incoming/",
        "archivePrefix": "archive/", "pollIntervalSeconds": 0.3, "envelopeRecords": envelope,
        "mapping": {"fields": {"sku": "SKU", "location": "Store", "onHand": "Qty",
                               "reserved": "Held"}, "defaults": {"reserved": 0}},
    }]}))
    return path


def start_worker(
    processes: ProcessFactory, kafka: KafkaCluster, app_id: str, sim: Sim, s3: str, channels: Path,
    data_dir: Path | None = None, **extra: str,
) -> StreamAppProcess:
    env = processes.env(worker_env(
        kafka, app_id, sim, STREAM_APP_CHANNELS_FILE=str(channels), STREAM_APP_S3_ENDPOINT_URL=s3,
        STREAM_APP_S3_REGION=REGION, STREAM_APP_AWS_ACCESS_KEY_ID=DUMMY_KEY_ID,
        STREAM_APP_AWS_SECRET_ACCESS_KEY=DUMMY_SECRET, **extra,
    ))
    if data_dir is not None:
        env["STREAM_APP_DATA_DIR"] = str(data_dir)
    worker = processes.start("worker", env)
    worker.wait_ready(90)
    return worker


def sentinels(bootstrap: str, topic: str, partitions: int) -> None:
    """One sentinel per partition: what was on the broker before is read before them."""

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for partition in range(partitions):
                await producer.send_and_wait(topic, b'{"sentinel": true}', partition=partition)
        finally:
            await producer.stop()

    asyncio.run(main())


def channel_view(worker: StreamAppProcess) -> dict[str, Any]:
    code, body = worker.get("/channels")
    assert code == 200, body
    (view,) = [c for c in body["channels"] if c["name"] == CHANNEL]
    return view  # type: ignore[no-any-return]


def test_a_csv_drop_lands_in_atp_and_fluent_once_with_a_rejection_report(
    processes: ProcessFactory, kafka: KafkaCluster, s3_server: str, tmp_path: Path
) -> None:
    bucket = Bucket(s3_server)
    sim = start_sim(processes)
    app_id = f"ch-{uuid.uuid4().hex[:6]}"
    worker = start_worker(processes, kafka, app_id, sim, s3_server, channels_file(tmp_path, bucket.name),
                          STREAM_APP_CSV_MAX_RECORD_BYTES="1024")
    csv = (
        b"SKU,Store,Qty,Held\n"
        b"SKU-1,S1,40,5\n"
        b"SKU-2,S1,-3,0\n"  # line 3: negative
        b"SKU-3,S1,7\n"  # line 4: a field short
        b'SKU-4,"S,2",12,\n'  # a quoted delimiter; Held empty -> the default 0
        b",S1,5,0\n"  # line 6: no SKU
        b"SKU-5,S\xff1,5,0\n"  # line 7: not UTF-8
        b'SKU-6,"S1,' + b"x" * 1100 + b",5,0\n"  # line 8: a stray quote, a record past the cap
        b"SKU-7,S1,9,0\n"  # read on after it (else the rest of the file were one record)
    )
    bucket.put("incoming/stock-1.csv", csv)

    view = wait_for(lambda: (v := channel_view(worker))["filesIngested"] >= 1 and v, 60, 0.2, "file ingested")
    assert view["active"] and view["owner"] and view["rowsDone"] == 8 and view["rejected"] == 5
    assert wait_for(lambda: worker.get("/inventory/SKU-1/S1")[1].get("atp") == 35, 30, 0.2, "SKU-1")
    assert worker.get("/inventory/SKU-4/S,2")[1]["atp"] == 12
    assert worker.get("/inventory/SKU-7/S1")[1]["atp"] == 9
    assert worker.get("/inventory/SKU-2/S1")[0] == 404
    wait_for(lambda: sim.inventory().get("SKU-1|S1") == 35, 30, 0.2, "Fluent holds SKU-1")

    keys = set(bucket.keys())
    assert "incoming/stock-1.csv" not in keys and "archive/stock-1.csv" in keys
    report = bucket.json("archive/stock-1.csv.rejections.json")
    assert (report["rows"], report["accepted"], report["rejected"]) == (8, 3, 5)
    by_line = {r["line"]: r["reasons"] for r in report["rejections"]}
    assert set(by_line) == {3, 4, 6, 7, 8}
    assert by_line[7] == ["not utf-8: invalid start byte"]
    assert by_line[8] == ["a record of more than 1,024 bytes (an unclosed quote?): skipped to the "
                          "end of line 8"]
    assert any("negative" in reason for reason in by_line[3])
    assert any("3 fields where the header has 4" in reason for reason in by_line[4])
    assert any("SKU" in reason for reason in by_line[6])
    assert not [k for k in keys if ".parts/" in k]

    # the same content dropped again (another name) is archived, not ingested
    bucket.put("incoming/stock-1-again.csv", csv)
    view = wait_for(lambda: (v := channel_view(worker))["duplicatesSkipped"] >= 1 and v, 60, 0.2, "duplicate")
    assert view["rowsDone"] == 8 and view["filesIngested"] == 1
    assert "archive/stock-1-again.csv" in bucket.keys()
    # everything the channel sent is before the sentinels sent now to every partition
    topic = f"{app_id}-inventory-changes"
    sentinels(kafka.bootstrap, topic, 4)  # STREAM_APP_PARTITIONS of worker_env
    got = consume(kafka.bootstrap, topic, until=lambda got: sum("sentinel" in m for m in got) == 4)
    assert sum(len(m.get("records", ())) for m in got) == 3  # one envelope, never sent again

    # Ctrl-C reaches the worker and its parse process (one process group): a clean stop
    assert worker.proc is not None
    helpers = children(worker.proc.pid)
    assert helpers
    os.killpg(worker.proc.pid, signal.SIGINT)
    assert worker.proc.wait(30) == 0
    # the parse process leaves just after its worker (the pool's shutdown does not wait)
    wait_for(lambda: not [pid for pid in helpers if alive(pid)], 10, 0.1, "the parse process gone")
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, worker.tail()


def test_a_worker_killed_mid_file_loses_and_duplicates_nothing(
    processes: ProcessFactory, kafka: KafkaCluster, s3_server: str, tmp_path: Path
) -> None:
    bucket = Bucket(s3_server)
    sim = start_sim(processes)
    app_id = f"chk-{uuid.uuid4().hex[:6]}"
    channels = channels_file(tmp_path, bucket.name, envelope=50)
    data_dir = tmp_path / "w"
    data_dir.mkdir()
    worker = start_worker(processes, kafka, app_id, sim, s3_server, channels, data_dir)
    rows = 6000
    lines = ["SKU,Store,Qty,Held"] + [f"K{n},S{n % 7},{n % 97},{n % 5}" for n in range(rows)]
    bad_lines = [101, 3001, 5901]  # before and after the kill: each part written once
    for line in bad_lines:
        lines[line - 1] = f"K-bad{line},S1,x,0"
    bucket.put("incoming/big.csv", ("\n".join(lines) + "\n").encode())

    wait_for(lambda: ((channel_view(worker).get("file") or {}).get("rowsDone") or 0) > 500, 60, 0.05, "mid-file")
    assert worker.proc is not None
    helpers = children(worker.proc.pid)
    assert helpers  # the rows are parsed in a parse process
    os.kill(worker.proc.pid, signal.SIGKILL)  # the worker alone, not its process group
    worker.proc.wait(10)
    wait_for(lambda: not [pid for pid in helpers if alive(pid)], 30, 0.1, "the parse process gone with it")
    worker = start_worker(processes, kafka, app_id, sim, s3_server, channels, data_dir)
    wait_for(lambda: "archive/big.csv.rejections.json" in bucket.keys(), 120, 0.3, "file finished")
    report = bucket.json("archive/big.csv.rejections.json")
    assert (report["rows"], report["accepted"], report["rejected"]) == (rows, rows - 3, 3)
    assert [r["line"] for r in report["rejections"]] == bad_lines
    assert not [k for k in bucket.keys() if ".parts/" in k]  # the parts are gone

    envelopes = consume(kafka.bootstrap, f"{app_id}-inventory-changes",
                        until=lambda got: sum(len(m["records"]) for m in got) >= rows - 3, timeout=30)
    ids = [r["eventId"] for m in envelopes for r in m["records"]]
    assert set(ids) == {f"s3:{CHANNEL}:{report['etag']}:{n + 2:012d}" for n in range(rows)
                        if n + 2 not in bad_lines}
    assert len(ids) - len(set(ids)) <= 50 * PIPELINE_DEPTH  # at most the envelopes in flight at the kill
    for n in (0, 1234, rows - 1):  # and the state is the oracle's
        body = wait_for(lambda n=n: (r := worker.get(f"/inventory/K{n}/S{n % 7}"))[0] == 200 and r[1],
                        30, 0.2, f"K{n}")
        assert body["atp"] == max(0, n % 97 - n % 5)


class ThreadedUpstream:
    """A REST upstream on loopback in its own thread (the worker is another process):
    two pages by cursor, the first answered 429 with Retry-After once, the token checked."""

    TOKEN = "Bearer e2e-secret-token"

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.limited = False
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        if request.headers.get("Authorization") != self.TOKEN:
            return web.json_response({"error": "unauthorized"}, status=401)
        if not self.limited:
            self.limited = True
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "1"})
        if request.query.get("cursor") == "p2":
            return web.json_response({"items": [
                {"sku": "R-2", "store": "S1", "available": "8"},
                {"sku": "R-3", "store": "S1", "available": "lots"},  # rejected: dead letter
            ], "next": None})
        return web.json_response({"items": [{"sku": "R-1", "store": "S1", "available": 5}], "next": "p2"})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/stock", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_rest_channel_and_a_broken_one_side_by_side(
    processes: ProcessFactory, kafka: KafkaCluster, s3_server: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = ThreadedUpstream()
    try:
        sim = start_sim(processes)
        app_id = f"chr-{uuid.uuid4().hex[:6]}"
        path = tmp_path / "channels.json"
        path.write_text(json.dumps({"channels": [
            {"name": "MARKETPLACE", "kind": "rest", "url": f"http://127.0.0.1:{upstream.port}/stock",
             "authEnv": "E2E_MARKETPLACE_TOKEN", "recordsPath": "$.items[*]", "nextCursorPath": "$.next",
             "pollIntervalSeconds": 0.5,
             "mapping": {"fields": {"sku": "sku", "location": "store", "onHand": "available"}}},
            {"name": "BROKEN", "kind": "s3", "bucket": "no-such-bucket", "prefix": "in/",
             "archivePrefix": "done/", "pollIntervalSeconds": 0.5,
             "mapping": {"fields": {"sku": "s", "location": "l", "onHand": "q"}}},
        ]}))
        monkeypatch.setenv("E2E_MARKETPLACE_TOKEN", ThreadedUpstream.TOKEN)
        worker = start_worker(processes, kafka, app_id, sim, s3_server, path)

        # both pages' records (two keys: their partitions apply in no order to each other)
        assert wait_for(lambda: worker.get("/inventory/R-2/S1")[1].get("atp") == 8, 60, 0.2, "page 2")
        assert wait_for(lambda: worker.get("/inventory/R-1/S1")[1].get("atp") == 5, 30, 0.2, "page 1")
        views = {c["name"]: c for c in worker.get("/channels")[1]["channels"]}
        rest = views["MARKETPLACE"]
        assert rest["active"] and rest["rest"]["retriesTotal"] >= 1 and rest["rejected"] >= 1
        broken = wait_for(lambda: (v := {c["name"]: c for c in worker.get("/channels")[1]["channels"]})["BROKEN"]["lastError"] and v["BROKEN"], 30, 0.2, "broken channel's error")
        assert "no-such-bucket" in broken["lastError"]["error"]
        letters = consume(kafka.bootstrap, "{}-dlq".format(f"{app_id}-inventory-changes"), until=lambda got: len(got) >= 1, raw=True)
        assert dict(letters[0].headers)["dlq-source-channel"] == b"MARKETPLACE"
        log = worker.log_path.read_text()
        assert ThreadedUpstream.TOKEN not in log and "e2e-secret-token" not in log
        assert upstream.requests[0] == "/stock" and "/stock?cursor=p2" in upstream.requests
    finally:
        upstream.stop()


def test_two_workers_run_one_poller_per_channel_and_ingest_a_file_once(
    processes: ProcessFactory, kafka: KafkaCluster, s3_server: str, tmp_path: Path
) -> None:
    bucket = Bucket(s3_server)
    sim = start_sim(processes)
    app_id = f"ch2-{uuid.uuid4().hex[:6]}"
    channels = channels_file(tmp_path, bucket.name, envelope=100)
    first = start_worker(processes, kafka, app_id, sim, s3_server, channels)
    second = start_worker(processes, kafka, app_id, sim, s3_server, channels)

    def local_views() -> list[dict[str, Any]]:
        views = []
        for worker in (first, second):
            code, body = worker.get("/channels?scope=local")
            assert code == 200, body
            views.extend(c for c in body["channels"] if c["name"] == CHANNEL)
        return views

    def split() -> bool:
        mine = set(first.health()[1].get("partitions") or [])
        theirs = set(second.health()[1].get("partitions") or [])
        return bool(mine) and bool(theirs) and not mine & theirs

    wait_for(split, 60, 0.2, "partitions split between the two workers")
    wait_for(lambda: sum(v["active"] for v in local_views()) == 1, 30, 0.2, "one active poller")
    rows = 1000
    lines = ["SKU,Store,Qty,Held"] + [f"T{n},S1,{n % 50},0" for n in range(rows)]
    bucket.put("incoming/two.csv", ("\n".join(lines) + "\n").encode())
    wait_for(lambda: "archive/two.csv.rejections.json" in bucket.keys(), 60, 0.3, "file finished")
    assert sum(v["active"] for v in local_views()) == 1
    assert sum(v["rowsDone"] for v in local_views()) == rows  # read by one of them, once
    # the archive is written before the file is remembered as ingested: wait for both
    merged = wait_for(lambda: (lambda v: v if v["filesIngested"] == 1 else None)(
        channel_view(second)), 30, 0.2, "the file counted as ingested")
    assert merged["owner"] and merged["filesIngested"] == 1
    topic = f"{app_id}-inventory-changes"
    sentinels(kafka.bootstrap, topic, 4)
    got = consume(kafka.bootstrap, topic, until=lambda got: sum("sentinel" in m for m in got) == 4)
    assert sum(len(m.get("records", ())) for m in got) == rows


class IncrementalUpstream:
    """An incremental REST feed on loopback (own thread): ``pages`` pages by cursor, each
    with an ETag (the last one answers 304 to it); the first request for page ``gate``
    is held until :meth:`release` (the worker is killed while waiting for it)."""

    def __init__(self, pages: int, per_page: int, gate: int) -> None:
        self.pages, self.per_page, self.gate = pages, per_page, gate
        self.requests: list[str | None] = []  # the cursor of each request (None: the first page)
        self.not_modified = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.held = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def items(self, page: int) -> list[dict[str, Any]]:
        return [{"sku": f"I{page}-{n}", "store": "S1", "available": page * 10 + n,
                 "ts": f"2026-12-01T00:{page:02d}:{n:02d}Z"} for n in range(self.per_page)]

    async def handle(self, request: web.Request) -> web.Response:
        cursor = request.query.get("cursor")
        self.requests.append(cursor)
        page = int(cursor[1:]) if cursor else 0
        etag = f'"page-{page}"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        if page == self.gate and self.requests.count(cursor) == 1:
            await self.held.wait()
        nxt = f"p{page + 1}" if page + 1 < self.pages else None
        return web.json_response({"items": self.items(page), "next": nxt}, headers={"ETag": etag})

    async def _start(self) -> asyncio.Event:
        app = web.Application()
        app.router.add_get("/feed", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return asyncio.Event()

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.held.set)

    def stop(self) -> None:
        self.release()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_worker_killed_mid_poll_resumes_at_its_checkpoint_and_sends_nothing_twice(
    processes: ProcessFactory, kafka: KafkaCluster, s3_server: str, tmp_path: Path
) -> None:
    pages, per_page, gate = 12, 25, 7
    upstream = IncrementalUpstream(pages, per_page, gate)
    try:
        sim = start_sim(processes)
        app_id = f"chrk-{uuid.uuid4().hex[:6]}"
        path = tmp_path / "channels.json"
        path.write_text(json.dumps({"channels": [
            {"name": "FEED", "kind": "rest", "url": f"http://127.0.0.1:{upstream.port}/feed",
             "recordsPath": "$.items[*]", "nextCursorPath": "$.next", "resumeFromCursor": True,
             "requestsPerMinute": 6000, "pollIntervalSeconds": 0.3,
             "mapping": {"fields": {"sku": "sku", "location": "store", "onHand": "available",
                                    "updatedAt": "ts"}}},
        ]}))
        data_dir = tmp_path / "w"
        data_dir.mkdir()
        worker = start_worker(processes, kafka, app_id, sim, s3_server, path, data_dir)
        wait_for(lambda: f"p{gate}" in upstream.requests, 60, 0.05, "the poller waiting for the held page")
        worker.kill()  # pages 0..gate-1 published and checkpointed; page `gate` not answered
        before = len(upstream.requests)
        worker = start_worker(processes, kafka, app_id, sim, s3_server, path, data_dir)
        upstream.release()
        wait_for(lambda: upstream.not_modified >= 1, 60, 0.1, "the walk finished (the last page 304)")
        # the new owner walked on from the checkpoint: the held page first, page 0 never again
        after = upstream.requests[before:]
        assert after[0] == f"p{gate}", after
        assert None not in after and f"p{gate - 1}" not in after

        wanted = {derived_event_id("FEED", {"sku": i["sku"], "location": "S1", "updatedAt": i["ts"]})
                  for p in range(pages) for i in upstream.items(p)}
        topic = f"{app_id}-inventory-changes"
        sentinels(kafka.bootstrap, topic, 4)  # after everything the walk sent
        got = consume(kafka.bootstrap, topic, until=lambda got: sum("sentinel" in m for m in got) == 4)
        ids = [r["eventId"] for m in got for r in m.get("records", ())]
        assert set(ids) == wanted  # nothing lost
        assert len(ids) == len(wanted)  # nothing twice (the last page answers 304 since)
        for p, n in ((0, 0), (gate, 3), (pages - 1, per_page - 1)):
            body = wait_for(lambda p=p, n=n: (r := worker.get(f"/inventory/I{p}-{n}/S1"))[0] == 200 and r[1],
                            30, 0.2, f"I{p}-{n}")
            assert body["atp"] == p * 10 + n
    finally:
        upstream.stop()
