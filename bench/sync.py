"""Sync benchmark (issue 3): delta sync to Fluent under a churn workload.

One run on the embedded broker with the Fluent simulator and ONE worker as real processes
(``python -m stream_app.cli fluent-sim`` / ``worker``), a short flush interval, and a
steady stream of updates on a small set of hot keys spread over several flush windows.
Reported, with their targets:

(1) records sent to Fluent (sum of ``entityCount`` over the simulator's batches) ÷ events
    ingested — target <= 5 %;
(2) event-to-accepted latency p50/p99 — for each produced event, the time from its
    produce to the moment the simulator holds a quantity at least as new as that event —
    target p99 <= flush interval + 2 s.

Every event of a key carries ``onHand = its global sequence number + 1`` (no reservations,
no buffer), so the sellable quantity Fluent holds names the newest event it reflects; the
simulator's ``/_sim/inventory`` is polled every ~100 ms and an event counts as accepted at
the first poll whose held quantity for its key is >= the event's quantity. The final state
must converge (the simulator holds the last quantity of every key) or the run fails.
For context it also reports the ingest lag of one hot key (produce → worker table, from
the worker's ``/inventory`` view) and the flush runs the worker recorded (``/sync``).

Usage: python bench/sync.py [--quick] [--rate N] [--seconds S] [--keys K] [--flush-interval S]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from bench.common import python_path  # noqa: E402
from stream_app.embedded import EmbeddedBroker, free_port  # noqa: E402

PARTITIONS = 4
LOCATION = "DC-1"
POLL_SECONDS = 0.1
BASE_UPDATED_AT_MS = 1_795_000_000_000
RATIO_TARGET = 0.05
LATENCY_SLACK_S = 2.0


@dataclass(frozen=True)
class Profile:
    rate: int  # events per second
    seconds: float  # seconds of steady production
    keys: int  # hot keys
    flush_interval: float  # STREAM_APP_FLUSH_INTERVAL_SECONDS

    @property
    def events(self) -> int:
        return int(self.rate * self.seconds)


FULL = Profile(rate=1000, seconds=30.0, keys=50, flush_interval=5.0)
QUICK = Profile(rate=1000, seconds=15.0, keys=50, flush_interval=5.0)


def sku(key: int) -> str:
    return f"HOT-{key:03d}"


def churn_event(i: int, keys: int) -> dict[str, Any]:
    """Event ``i`` of the stream: key ``i % keys``, sellable quantity ``i + 1``."""
    return {
        "eventId": f"churn-{i}",
        "channel": "WMS",
        "sku": sku(i % keys),
        "location": LOCATION,
        "onHand": i + 1,
        "reserved": 0,
        "updatedAt": BASE_UPDATED_AT_MS + i,
    }


# --- processes ---------------------------------------------------------------------------


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """A blocking GET returning (status, decoded JSON or None)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, orjson.loads(body)
        except orjson.JSONDecodeError:
            return exc.code, None


class AppProcess:
    """``python -m stream_app.cli COMMAND`` in its own session; SIGTERM, then SIGKILL."""

    def __init__(self, command: str, env: dict[str, str], workdir: Path, web_port: int) -> None:
        self.command = command
        self.url = f"http://127.0.0.1:{web_port}"
        self.log_path = workdir / f"{command}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream_app.cli", command],
                env={**os.environ, "PYTHONPATH": python_path(), **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,  # no stray .env from the repository is read
                start_new_session=True,
            )

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.command} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if check():
                    return
            except (OSError, ValueError):
                pass  # not listening yet
            time.sleep(0.2)
        raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  ({self.command} did not stop in {timeout:.0f}s after SIGTERM: SIGKILL)")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_simulator(workdir: Path) -> AppProcess:
    port = free_port()
    sim = AppProcess(
        "fluent-sim",
        {
            "STREAM_APP_FLUENT_SIM_PORT": str(port),
            "STREAM_APP_WEB_PORT": str(port),
            "STREAM_APP_DATA_DIR": str(workdir),
            "STREAM_APP_LOG_LEVEL": "WARNING",
        },
        workdir,
        port,
    )
    sim.wait_until(lambda: http_json(sim.url + "/_sim/inventory")[0] == 200, 30, "simulator up")
    return sim


def start_worker(
    workdir: Path, bootstrap: str, sim_url: str, app_id: str, profile: Profile
) -> AppProcess:
    port = free_port()
    env = {
        "STREAM_APP_KAFKA_BROKER": bootstrap,
        "STREAM_APP_APP_ID": app_id,
        "STREAM_APP_PARTITIONS": str(PARTITIONS),
        "STREAM_APP_CORRECT_END_OFFSETS": "true",
        "STREAM_APP_WEB_PORT": str(port),
        "STREAM_APP_DATA_DIR": str(workdir),
        "STREAM_APP_LOG_LEVEL": "INFO",
        "STREAM_APP_BROKER_SESSION_TIMEOUT": "6",
        "STREAM_APP_FLUENT_BASE_URL": sim_url,
        "STREAM_APP_FLUSH_INTERVAL_SECONDS": str(profile.flush_interval),
        "STREAM_APP_RESYNC_CRON": "0 1 1 1 *",  # keep the daily full resync out of the window
        "STREAM_APP_TOPIC_INVENTORY_CHANGES": f"{app_id}-inventory-changes",
        "STREAM_APP_TOPIC_PRE_ORDERS": f"{app_id}-pre-orders",
        "STREAM_APP_TOPIC_RESERVATION_COMMANDS": f"{app_id}-reservation-commands",
        "STREAM_APP_TOPIC_RESERVATION_EVENTS": f"{app_id}-reservation-events",
        "STREAM_APP_TOPIC_PRE_ORDER_RESULTS": f"{app_id}-pre-order-results",
    }
    worker = AppProcess("worker", env, workdir, port)

    def ready() -> bool:
        status, body = http_json(worker.url + "/health", timeout=2)
        return status == 200 and bool(body and body.get("ready"))

    worker.wait_until(ready, 120, "worker ready")
    return worker


def final_quantities(events: int, keys: int) -> dict[str, int]:
    """The quantity each key must end at: that of its last event."""
    return {sku(i % keys): i + 1 for i in range(max(0, events - keys), events)}


# --- the measured run --------------------------------------------------------------------


@dataclass
class Series:
    """Times (monotonic) at which a polled quantity was first seen at a new value."""

    times: list[float] = field(default_factory=list)
    qtys: list[int] = field(default_factory=list)  # running maximum of what was seen
    regressions: int = 0  # polls that saw a lower quantity than before

    def see(self, at: float, qty: int) -> None:
        if self.qtys and qty <= self.qtys[-1]:
            if qty < self.qtys[-1]:
                self.regressions += 1
            return
        self.times.append(at)
        self.qtys.append(qty)

    def reached(self, qty: int) -> float | None:
        """First time a quantity >= ``qty`` was seen."""
        idx = bisect.bisect_left(self.qtys, qty)
        return self.times[idx] if idx < len(self.qtys) else None

    @property
    def last(self) -> int | None:
        return self.qtys[-1] if self.qtys else None


@dataclass
class Observed:
    produced_at: list[float]
    produce_seconds: float
    held: dict[str, Series]  # per SKU, what the simulator holds
    applied: Series  # what the worker's table holds for key 0
    polls: int
    poll_errors: int
    converged_after_s: float | None
    final: dict[str, int]


async def poll_until(
    session: aiohttp.ClientSession,
    url: str,
    stop: asyncio.Event,
    on_body: Callable[[float, Any], None],
) -> tuple[int, int]:
    """GET ``url`` every POLL_SECONDS until ``stop``; returns (polls, errors)."""
    polls = errors = 0
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                body = await response.json() if response.status == 200 else None
            if body is not None:
                on_body(time.monotonic(), body)
            polls += 1
        except (aiohttp.ClientError, TimeoutError, ValueError):
            errors += 1
        next_at += POLL_SECONDS
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return polls, errors


async def measure(
    bootstrap: str, topic: str, sim_url: str, worker_url: str, profile: Profile
) -> Observed:
    total, keys = profile.events, profile.keys
    held = {sku(k): Series() for k in range(keys)}
    current: dict[str, int] = {}
    applied = Series()

    def on_inventory(at: float, rows: Any) -> None:
        for row in rows:
            name = row.get("skuRef")
            if name in held and row.get("locationRef") == LOCATION:
                current[name] = int(row["qty"])
                held[name].see(at, int(row["qty"]))

    def on_key0(at: float, body: Any) -> None:
        if isinstance(body, dict) and "atp" in body:
            applied.see(at, int(body["atp"]))

    stop_sim, stop_worker = asyncio.Event(), asyncio.Event()
    async with aiohttp.ClientSession() as session:
        sim_poller = asyncio.create_task(
            poll_until(session, sim_url + "/_sim/inventory", stop_sim, on_inventory)
        )
        key0_poller = asyncio.create_task(
            poll_until(session, f"{worker_url}/inventory/{sku(0)}/{LOCATION}", stop_worker, on_key0)
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        await producer.start()
        produced_at = [0.0] * total
        try:
            pending: list[asyncio.Future[Any]] = []
            started = time.monotonic()
            i = 0
            while i < total:
                due = min(total, int((time.monotonic() - started) * profile.rate) + 1)
                while i < due:
                    produced_at[i] = time.monotonic()
                    pending.append(await producer.send(topic, orjson.dumps(churn_event(i, keys))))
                    i += 1
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
                await asyncio.sleep(0.005)
            await producer.flush()
            await asyncio.gather(*pending)
            produce_seconds = time.monotonic() - started
        finally:
            await producer.stop()

        last = final_quantities(total, keys)
        deadline = time.monotonic() + 3 * profile.flush_interval + 20
        converged_at: float | None = None
        while time.monotonic() < deadline:
            if all(current.get(name) == qty for name, qty in last.items()):
                converged_at = time.monotonic()
                break
            await asyncio.sleep(POLL_SECONDS)
        stop_sim.set()
        stop_worker.set()
        polls, errors = await sim_poller
        await key0_poller
    end_of_production = started + produce_seconds
    return Observed(
        produced_at=produced_at,
        produce_seconds=produce_seconds,
        held=held,
        applied=applied,
        polls=polls,
        poll_errors=errors,
        converged_after_s=None if converged_at is None else converged_at - end_of_production,
        final=dict(current),
    )


# --- figures -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-pct * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def latencies_in_order(obs: Observed, keys: int) -> list[float]:
    return [
        max(0.0, at - produced)
        for i, produced in enumerate(obs.produced_at)
        if (at := obs.held[sku(i % keys)].reached(i + 1)) is not None
    ]


def latencies(obs: Observed, keys: int) -> tuple[list[float], int]:
    """Event-to-accepted seconds of every accepted event, and how many were never accepted."""
    out: list[float] = []
    missing = 0
    for i, produced in enumerate(obs.produced_at):
        at = obs.held[sku(i % keys)].reached(i + 1)
        if at is None:
            missing += 1
        else:
            out.append(max(0.0, at - produced))
    out.sort()
    return out, missing


def ingest_lags(obs: Observed, keys: int) -> list[float]:
    """Produce → worker table, for the events of key 0 (the hot key whose view is polled),
    in produce order."""
    return [
        max(0.0, at - obs.produced_at[i])
        for i in range(0, len(obs.produced_at), keys)
        if (at := obs.applied.reached(i + 1)) is not None
    ]


def thirds(values: list[float]) -> list[float]:
    """Median of each third of ``values`` (in their order): does a lag grow over the run?"""
    n = len(values)
    parts = [sorted(values[n * j // 3 : n * (j + 1) // 3]) for j in range(3)]
    return [percentile(part, 50) for part in parts]


def parse_iso(value: str | None) -> float | None:
    return None if not value else datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def flush_runs(worker_url: str) -> list[dict[str, Any]]:
    status, body = http_json(worker_url + "/sync?scope=local")
    if status != 200 or not isinstance(body, dict):
        return []
    runs = [r for r in body.get("runs", []) if r.get("startedAt")]
    return sorted(runs, key=lambda r: r["startedAt"])


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    starts = [t for r in runs if (t := parse_iso(r.get("startedAt"))) is not None]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    durations = [float(r["durationSeconds"]) for r in runs if r.get("durationSeconds") is not None]
    return {
        "runs": len(runs),
        "failed": sum(1 for r in runs if r.get("state") == "failed"),
        "records": [int(r.get("recordsSent", 0)) for r in runs],
        "gap_s": {
            "min": min(gaps, default=0.0),
            "max": max(gaps, default=0.0),
            "mean": sum(gaps) / len(gaps) if gaps else 0.0,
        },
        "duration_s": {
            "min": min(durations, default=0.0),
            "max": max(durations, default=0.0),
            "mean": sum(durations) / len(durations) if durations else 0.0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="shorter production (about 1 minute in all)"
    )
    parser.add_argument("--rate", type=int, help="events per second")
    parser.add_argument("--seconds", type=float, help="seconds of steady production")
    parser.add_argument("--keys", type=int, help="hot keys")
    parser.add_argument("--flush-interval", type=float, help="worker flush interval in seconds")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    profile = Profile(
        rate=args.rate or base.rate,
        seconds=args.seconds or base.seconds,
        keys=args.keys or base.keys,
        flush_interval=args.flush_interval or base.flush_interval,
    )
    if profile.events < profile.keys:
        raise SystemExit("need at least one event per key")

    app_id = f"bench-sync-{uuid.uuid4().hex[:6]}"
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "broker.log").start()
        procs: list[AppProcess] = []
        try:
            sim = start_simulator(workdir / "sim")
            procs.append(sim)
            worker = start_worker(workdir / "worker", broker.bootstrap, sim.url, app_id, profile)
            procs.append(worker)
            ready_s = time.monotonic() - began
            print(
                f"broker, simulator and worker ready in {ready_s:.1f}s; producing {profile.events:,} "
                f"events on {profile.keys} keys at {profile.rate:,}/s "
                f"(flush interval {profile.flush_interval:g}s)",
                flush=True,
            )
            obs = asyncio.run(
                measure(
                    broker.bootstrap, f"{app_id}-inventory-changes", sim.url, worker.url, profile
                )
            )
            status, batches = http_json(sim.url + "/_sim/batches")
            runs = flush_runs(worker.url)
            worker_log = worker.log_path.read_text(errors="replace")
        finally:
            for proc in reversed(procs):
                proc.stop()
            broker.stop()
    load_after = os.getloadavg()[0]
    if status != 200 or not isinstance(batches, list):
        raise SystemExit(f"could not read the simulator's batches ({status})")

    events = profile.events
    records_sent = sum(int(b["entityCount"]) for b in batches)
    ratio = records_sent / events
    lat, missing = latencies(obs, profile.keys)
    p50, p99, worst = percentile(lat, 50), percentile(lat, 99), (lat[-1] if lat else float("nan"))
    lag_in_order = ingest_lags(obs, profile.keys)
    lag, lag_trend = sorted(lag_in_order), thirds(lag_in_order)
    lat_trend = thirds(latencies_in_order(obs, profile.keys))
    latency_target = profile.flush_interval + LATENCY_SLACK_S
    expected = final_quantities(events, profile.keys)
    wrong = {k: (obs.final.get(k), v) for k, v in expected.items() if obs.final.get(k) != v}
    converged = not wrong and missing == 0
    runs_summary = summarize_runs(runs)
    regressions = sum(s.regressions for s in obs.held.values())
    errors_in_log = sum(1 for line in worker_log.splitlines() if "ERROR" in line)
    buffer_full = worker_log.count("producer buffer full")
    rebalances = max(0, worker_log.count("Worker ready") - 1)  # Faust logs it after each assignment
    stalled_s = sum(float(m) for m in re.findall(r"producer flush took ([0-9.]+)", worker_log))

    ratio_ok, latency_ok = ratio <= RATIO_TARGET, p99 <= latency_target
    rows = [
        ("events ingested", f"{events:,}", "", ""),
        ("records sent to Fluent", f"{records_sent:,} in {len(batches)} batches", "", ""),
        (
            "records sent / events",
            f"{ratio:.2%}",
            f"<= {RATIO_TARGET:.0%}",
            "PASS" if ratio_ok else "FAIL",
        ),
        ("event-to-accepted p50", f"{p50:.2f} s", "", ""),
        (
            "event-to-accepted p99",
            f"{p99:.2f} s",
            f"<= {latency_target:g} s",
            "PASS" if latency_ok else "FAIL",
        ),
        ("event-to-accepted max", f"{worst:.2f} s", "", ""),
        (
            "event-to-accepted p50 by third",
            " / ".join(f"{v:.2f}" for v in lat_trend) + " s",
            "",
            "",
        ),
        (
            "ingest lag key 0 p50/p99",
            f"{percentile(lag, 50):.2f} / {percentile(lag, 99):.2f} s",
            "",
            "",
        ),
        ("ingest lag key 0 p50 by third", " / ".join(f"{v:.2f}" for v in lag_trend) + " s", "", ""),
        (
            "final state converged",
            "yes" if converged else f"NO ({len(wrong)} keys)",
            "all keys",
            "PASS" if converged else "FAIL",
        ),
    ]
    print()
    print(
        f"Sync benchmark: {profile.keys} hot keys, {profile.rate:,} events/s for {obs.produce_seconds:.1f} s, "
        f"flush interval {profile.flush_interval:g} s, {PARTITIONS} partitions, 1 worker"
    )
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    header = ("figure", "value", "target", "")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(line)
    gap, dur = runs_summary["gap_s"], runs_summary["duration_s"]
    print(
        f"flush runs: {runs_summary['runs']} ({runs_summary['failed']} failed), records per run "
        f"{runs_summary['records']}, gap between starts {gap['min']:.2f}–{gap['max']:.2f} s "
        f"(mean {gap['mean']:.2f}), run duration {dur['min']:.2f}–{dur['max']:.2f} s (mean {dur['mean']:.2f})"
    )
    conv = "never" if obs.converged_after_s is None else f"{obs.converged_after_s:.2f} s"
    print(
        f"converged {conv} after the last event; {obs.polls} simulator polls ({obs.poll_errors} failed), "
        f"{regressions} quantity regressions seen, {errors_in_log} ERROR lines and {buffer_full} "
        f"'producer buffer full' warnings ({stalled_s:.1f} s of waits) and {rebalances} rebalances in the worker log; "
        f"whole run {time.monotonic() - began:.0f} s"
    )
    print(
        f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs"
        + (
            "  (the machine was busy before the run: the figures may not be representative)"
            if load_before >= (os.cpu_count() or 1) / 2
            else ""
        )
    )
    print(
        json.dumps(
            {
                "profile": {
                    "rate": profile.rate,
                    "seconds": profile.seconds,
                    "keys": profile.keys,
                    "flush_interval_s": profile.flush_interval,
                    "partitions": PARTITIONS,
                },
                "events": events,
                "records_sent": records_sent,
                "batches": len(batches),
                "records_per_event": ratio,
                "records_per_event_target": RATIO_TARGET,
                "latency_p50_s": p50,
                "latency_p99_s": p99,
                "latency_max_s": worst,
                "latency_p99_target_s": latency_target,
                "not_accepted": missing,
                "latency_p50_by_third_s": lat_trend,
                "ingest_lag_p50_s": percentile(lag, 50),
                "ingest_lag_p99_s": percentile(lag, 99),
                "ingest_lag_p50_by_third_s": lag_trend,
                "converged": converged,
                "converged_after_s": obs.converged_after_s,
                "flush_runs": runs_summary,
                "quantity_regressions": regressions,
                "load_avg_1m": {"before": load_before, "after": load_after, "cpus": os.cpu_count()},
                "worker_log": {
                    "errors": errors_in_log,
                    "producer_buffer_full": buffer_full,
                    "producer_buffer_wait_s": stalled_s,
                    "rebalances": rebalances,
                },
                "pass": {"ratio": ratio_ok, "latency": latency_ok, "converged": converged},
            }
        )
    )
    if not converged:
        raise SystemExit(
            f"the simulator did not converge: key -> (held, expected) {dict(list(wrong.items())[:10])}"
        )


if __name__ == "__main__":
    main()
