"""The benchmark's floor worker builds with the worker's own pieces (it broke silently once
when they moved: the benchmark then waited for a worker that had exited)."""

from __future__ import annotations

from bench.floor_worker import build
from stream_app.settings import load_settings


def test_the_floor_worker_builds() -> None:
    app = build(load_settings(_env_file=None, app_id="floor-test"))
    assert "floor-echo" in {agent.name for agent in app.agents.values()}
