"""Settings: defaults from the contract, one clear message per bad value, secrets masked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream_app.settings import Settings, SettingsError, load_settings


def test_contract_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("STREAM_APP_"):
            monkeypatch.delenv(name)
    s = load_settings(_env_file=None)
    assert (s.kafka_broker, s.app_id, s.embedded_kafka_port, s.web_port) == ("", "stream-app", 9092, 6066)
    assert (s.fluent_base_url, s.fluent_sim_port, s.retailer_id) == ("", 8787, "1")
    assert (s.flush_interval_seconds, s.batch_size, s.overbooking_rate) == (30, 500, 1.05)
    assert (s.min_days_ahead, s.max_days_ahead, s.expiry_days, s.waitlist_enabled) == (7, 180, 7, True)
    assert s.partitions == 8 and s.oversell_protection and s.embedded
    assert s.broker_url == "kafka://127.0.0.1:9092"


def test_env_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("STREAM_APP_KAFKA_BROKER", "broker-1:9093")
    monkeypatch.setenv("STREAM_APP_CHANNEL_BUFFERS", '{"WMS": 4}')
    env_file = tmp_path / ".env"  # type: ignore[operator]
    env_file.write_text("STREAM_APP_BATCH_SIZE=250\n")
    s = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert s.bootstrap_servers == "broker-1:9093" and not s.embedded
    assert s.channel_buffers == {"WMS": 4} and s.batch_size == 250


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("STREAM_APP_BATCH_SIZE", "6000"),
        ("STREAM_APP_WEB_PORT", "not-a-port"),
        ("STREAM_APP_PARTITIONS", "0"),
        ("STREAM_APP_OVERSELL_PROTECTION", "maybe"),
        ("STREAM_APP_GC_THRESHOLDS", "[700, -1, 10]"),
        ("STREAM_APP_RELEASE_ORDERS_PER_REQUEST", "0"),
        ("STREAM_APP_RELEASE_CRON", "0 2 31 2 *"),  # valid fields, never fires (Feb 31)
        ("STREAM_APP_RELEASE_CRON", "0 2 * * * *"),  # six fields: croniter reads seconds
        ("STREAM_APP_EXPORT_CRON", "0 25 * * *"),
        ("STREAM_APP_TIER_SCORES", "{not json"),  # pydantic-settings' own error, named
        ("STREAM_APP_EVENT_LOOP", "trio"),
    ],
)
def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings(_env_file=None)
    assert var in str(err.value)


@pytest.mark.parametrize(
    ("var", "value"), [("STREAM_APP_BATCH_SIZE", "99999"), ("STREAM_APP_OVERBOOKING_RATES", "{x")]
)
def test_cli_stops_with_one_message_naming_the_variable(var: str, value: str) -> None:
    import os

    env = {**os.environ, var: value}
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "settings"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert var in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_APP_FLUENT_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("STREAM_APP_ADMIN_API_KEY", "admin-key-123")
    monkeypatch.setenv("STREAM_APP_SERVICE_API_KEY", "service-key-456")
    monkeypatch.setenv("STREAM_APP_RESERVATION_ID_SECRET", "id-secret-789")
    s = load_settings(_env_file=None)
    from stream_app.credentials import Credentials
    from stream_app.domain.preorders import Policy

    dumped = str(s.masked()) + repr(s) + str(s) + repr(Credentials.from_settings(s))
    dumped += repr(Policy.from_settings(s))
    for secret in ("hunter2-very-secret", "admin-key-123", "service-key-456", "id-secret-789"):
        assert secret not in dumped
    assert s.fluent_password.get_secret_value() == "hunter2-very-secret"


def test_worker_tuning_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(_env_file=None)
    assert s.gc_thresholds == (50_000, 20, 1_000) and s.release_orders_per_request == 50
    monkeypatch.setenv("STREAM_APP_GC_THRESHOLDS", "[700, 10, 10]")
    monkeypatch.setenv("STREAM_APP_CONSUMER_PREFETCH_BACKOFF_MS", "0")
    s = load_settings(_env_file=None)
    assert s.gc_thresholds == (700, 10, 10) and s.consumer_prefetch_backoff_ms == 0


def test_worker_process_gets_the_gc_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from stream_app.cli import tune_worker_process

    before = gc.get_threshold()
    monkeypatch.setenv("STREAM_APP_GC_THRESHOLDS", "[12345, 11, 12]")
    try:
        tune_worker_process(load_settings(_env_file=None))
        assert gc.get_threshold() == (12345, 11, 12)
    finally:
        gc.set_threshold(*before)


LOOP_PROBE = """
import asyncio, sys, threading
from stream_app.cli import worker_loop
from stream_app.settings import load_settings

loop = worker_loop(load_settings(_env_file=None))
made = []  # what a thread of the worker makes for itself (mode's ServiceThread: new_event_loop)
thread = threading.Thread(target=lambda: made.append(asyncio.new_event_loop()))
thread.start()
thread.join()
assert asyncio.get_event_loop() is loop
print(type(loop).__module__, type(made[0]).__module__)
"""


@pytest.mark.parametrize(("kind", "module"), [(None, "asyncio"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_worker_and_its_threads_run_the_configured_loop(kind: str | None, module: str) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "STREAM_APP_EVENT_LOOP"}
    if kind is not None:
        env["STREAM_APP_EVENT_LOOP"] = kind
    proc = subprocess.run(
        [sys.executable, "-c", LOOP_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    worker, thread = proc.stdout.split()
    assert worker.split(".")[0] == module and thread.split(".")[0] == module


def test_producer_linger_reaches_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_app.app import create_faust_app

    monkeypatch.setenv("STREAM_APP_PRODUCER_LINGER_MS", "1.5")
    app = create_faust_app(load_settings(_env_file=None))
    assert app.conf.producer_linger == pytest.approx(0.0015)
