"""`stream-app run`: embedded broker + Fluent simulator + worker from one command, stopped cleanly."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest

from stream_app.embedded import free_port, port_open
from tests.fixtures.kafka import produce
from tests.fixtures.procs import ProcessFactory, StreamAppProcess, http, wait_for

pytestmark = pytest.mark.e2e


def run_env(processes: ProcessFactory, kafka_port: int, sim_port: int, **extra: str) -> dict[str, str]:
    """`stream-app run` with its own embedded broker and simulator on free ports."""
    return processes.env({
        "STREAM_APP_EMBEDDED_KAFKA_PORT": str(kafka_port),
        "STREAM_APP_FLUENT_SIM_PORT": str(sim_port),
        "STREAM_APP_KAFKA_BROKER": "",
        "STREAM_APP_FLUENT_BASE_URL": "",
        "STREAM_APP_PARTITIONS": "4",
        **extra,
    })


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_run_starts_everything_serves_inventory_and_stops_cleanly(processes: ProcessFactory, loop: str) -> None:
    kafka_port, sim_port = free_port(), free_port()
    env = run_env(
        processes, kafka_port, sim_port, STREAM_APP_FLUSH_INTERVAL_SECONDS="1", STREAM_APP_EVENT_LOOP=loop
    )
    run = processes.start("run", env)
    run.wait_ready(90)
    out = run.log_path.read_text()
    assert (f"event loop: {loop}" in out) == (loop != "asyncio")  # said when not the default
    assert f"embedded broker: 127.0.0.1:{kafka_port}" in out
    assert f"fluent simulator: http://127.0.0.1:{sim_port}/" in out
    assert f"web view:  http://127.0.0.1:{run.web_port}/" in out

    produce(f"127.0.0.1:{kafka_port}", "inventory-changes", [
        {"eventId": "1", "channel": "A", "sku": "SKU-1", "location": "LOC-1", "onHand": 100,
         "reserved": 20, "buffer": 5, "updatedAt": "2026-11-20T10:00:00Z"},
        {"eventId": "2", "channel": "B", "sku": "SKU-1", "location": "LOC-1", "onHand": 95,
         "reserved": 15, "buffer": 5, "updatedAt": "2026-11-20T10:00:00Z"},
    ])
    body = wait_for(
        lambda: (r := run.get("/inventory/SKU-1/LOC-1"))[0] == 200 and r[1], 30, 0.2, "inventory"
    )
    assert body["atp"] == 155
    # and the simulator it started receives the delta
    wait_for(
        lambda: any(r["qty"] == 155 for r in http("GET", f"http://127.0.0.1:{sim_port}/_sim/inventory")[1]),
        30, 0.2, "simulator holds the sellable quantity",
    )
    # a pre-order for it is decided and answered (the request path on this loop)
    ship = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
    status, answer = run.post("/pre-orders", {
        "orderId": f"RUN-{loop}", "customerId": "c-1", "customerEmail": "c1@example.com",
        "customerTier": "VIP", "shipDate": ship, "source": "web",
        "items": [{"sku": "SKU-1", "productName": "Console", "quantity": 2, "locationRef": "LOC-1"}],
    })
    assert status == 200 and answer["success"] is True, answer
    assert [r["quantity"] for r in answer["reservations"]] == [2], answer
    wait_for(  # the units it holds are no longer sellable in Fluent
        lambda: any(r["qty"] == 153 for r in http("GET", f"http://127.0.0.1:{sim_port}/_sim/inventory")[1]),
        30, 0.2, "simulator holds the sellable quantity less the reservation",
    )

    assert run.proc is not None
    run.proc.send_signal(signal.SIGTERM)  # the main process only: it must stop its children
    assert run.proc.wait(30) is not None
    wait_for(lambda: not port_open("127.0.0.1", kafka_port), 10, 0.1, "broker stopped")
    wait_for(lambda: not port_open("127.0.0.1", sim_port), 10, 0.1, "simulator stopped")
    wait_for(lambda: not port_open("127.0.0.1", run.web_port), 10, 0.1, "web view stopped")
    out = run.log_path.read_text()
    assert "Unclosed" not in out and "Traceback" not in out


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_ctrl_c_right_after_ready_stops_without_an_error(processes: ProcessFactory, loop: str) -> None:
    """Ctrl-C while the ingest consumer is still joining its group: it is closed before the
    worker tears its tasks down (was ``[ERROR] Unclosed AIOKafkaConsumer``)."""
    env = run_env(processes, free_port(), free_port(), STREAM_APP_EVENT_LOOP=loop)
    run = processes.start("run", env)
    run.wait_ready(90)
    assert run.proc is not None
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(30) is not None
    out = run.log_path.read_text()
    assert "[ERROR]" not in out, [line for line in out.splitlines() if "[ERROR]" in line]
    assert "Traceback" not in out


def test_run_starts_again_in_the_same_directory_after_sigterm_and_after_sigkill(
    processes: ProcessFactory,
) -> None:
    """Issue 11: a second `stream-app run` crashed with ConsistencyError (local tables of a
    broker that keeps nothing), and after kill -9 the broker lived on holding its port."""
    kafka_port, sim_port = free_port(), free_port()
    env = run_env(processes, kafka_port, sim_port)
    stock = {"eventId": "1", "channel": "A", "sku": "SKU-R", "location": "LOC-1", "onHand": 7,
             "reserved": 0, "updatedAt": "2026-11-20T10:00:00Z"}

    def start_and_use() -> StreamAppProcess:
        run = processes.start("run", env)
        run.wait_ready(90)
        produce(f"127.0.0.1:{kafka_port}", "inventory-changes", [stock])
        wait_for(lambda: run.get("/inventory/SKU-R/LOC-1")[0] == 200, 30, 0.2, "inventory")
        return run

    def stopped() -> bool:
        return not any(port_open("127.0.0.1", p) for p in (kafka_port, sim_port, run.web_port))

    run = start_and_use()
    assert run.proc is not None
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) is not None
    wait_for(stopped, 15, 0.1, "everything stopped after SIGTERM")

    run = start_and_use()  # same directory: local tables of the last run are discarded
    assert "local tables of the last run discarded" in run.log_path.read_text()
    assert run.proc is not None
    run.proc.send_signal(signal.SIGKILL)  # the main process only: its children must follow
    run.proc.wait(10)
    wait_for(stopped, 15, 0.1, "broker and simulator died with their parent")

    run = start_and_use()
    run.stop()
    wait_for(stopped, 15, 0.1, "everything stopped")
