"""docker-compose.yml (no Docker engine here): services, ports and settings names are right."""

from __future__ import annotations

from pathlib import Path

import yaml

from stream_app.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_kafka_kraft_and_two_workers() -> None:
    services = compose()["services"]
    assert {"kafka", "worker-1", "worker-2"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    for name in ("worker-1", "worker-2"):
        assert services[name]["command"] == ["stream-app", "worker"]
        assert "kafka" in services[name]["depends_on"]


def test_worker_environment_uses_real_settings_names() -> None:
    services = compose()["services"]
    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    for name, service in services.items():
        for var in service.get("environment", {}):
            if var.startswith(ENV_PREFIX):
                assert var in known, f"{name}: {var} is not a setting"
    w1, w2 = services["worker-1"]["environment"], services["worker-2"]["environment"]
    assert w1["STREAM_APP_APP_ID"] == w2["STREAM_APP_APP_ID"]  # one consumer group
    assert w1["STREAM_APP_KAFKA_BROKER"] == "kafka:9092"
    assert w1["STREAM_APP_FLUENT_BASE_URL"].startswith("http://fluent-sim")


def test_ports_match_web_ports() -> None:
    services = compose()["services"]
    for name in ("worker-1", "worker-2"):
        port = services[name]["environment"]["STREAM_APP_WEB_PORT"]
        assert f"{port}:{port}" in services[name]["ports"]
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:9092" in listeners
