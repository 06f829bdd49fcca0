"""Agent crashes are counted: an exception ending an agent's body counts once under its
name and is re-raised (Faust restarts the agent); a cancel (stop, rebalance) is not a
crash; every agent the app defines is counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stream_app.metrics import Metrics
from stream_app.settings import Settings
from stream_app.wiring import create_runtime


def crashes(metrics: Metrics, agent: str) -> float:
    return metrics.agent_crashes.labels(agent)._value.get()


async def test_a_crash_counts_once_and_is_raised_a_cancel_does_not_count() -> None:
    metrics = Metrics()

    @metrics.counting_crashes("demo")
    async def body(fail: type[BaseException] | None) -> str:
        """The agent's docstring."""
        if fail is not None:
            raise fail("boom")
        return "done"

    assert crashes(metrics, "demo") == 0 and body.__doc__ == "The agent's docstring."
    assert await body(None) == "done"
    with pytest.raises(KeyError):
        await body(KeyError)
    with pytest.raises(asyncio.CancelledError):
        await body(asyncio.CancelledError)
    assert crashes(metrics, "demo") == 1
    assert b'stream_app_agent_crashes_total{agent="demo"} 1.0' in metrics.render()


def test_every_agent_of_the_app_counts_its_crashes(tmp_path: Path) -> None:
    runtime = create_runtime(Settings(data_dir=tmp_path, _env_file=None))
    agents = runtime.app.agents
    assert len(agents) >= 4
    counted = {name: getattr(agent.fun, "counts_crashes", None) for name, agent in agents.items()}
    assert all(counted.values()), counted
