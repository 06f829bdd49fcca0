"""A channel poller's fence: it returns once the internal agent applied the poller's own
fence message (not another's), and times out naming the channel when the agent is behind."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents import channels
from agents.channels import ChannelsService, FenceTimeout
from agents.internal import CHANNEL_PROGRESS
from stream_app.connectors.config import ChannelsFile


class Table:
    def partition_of(self, key: str) -> int:
        return 3


class Sent(list[Any]):
    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()


def service(monkeypatch: pytest.MonkeyPatch, timeout: float = 5.0) -> tuple[ChannelsService, Sent]:
    sent = Sent()

    async def deliver(app: object, messages: list[Any]) -> None:
        sent.extend(messages)
        sent.event.set()

    monkeypatch.setattr(channels, "deliver", deliver)
    settings = SimpleNamespace(max_quantity=10**6, channel_fence_timeout_seconds=timeout,
                               channel_parse_processes=0, csv_max_record_bytes=1 << 20)
    runtime = SimpleNamespace(settings=settings, names=SimpleNamespace(internal="app-internal"), app=None)
    return ChannelsService(runtime, Table(), ChannelsFile()), sent  # type: ignore[arg-type]


async def test_a_fence_returns_once_its_own_message_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    svc, sent = service(monkeypatch)
    fence = asyncio.create_task(svc.fence("WMS"))
    await asyncio.wait_for(sent.event.wait(), 5)
    ((topic, kind, body, partition, _),) = sent
    assert (topic, kind, partition) == ("app-internal", CHANNEL_PROGRESS, 3)  # the channel's partition
    svc.apply_progress({"fence": "WMS:someone-elses"}, 3)  # another worker's, or an old one
    await asyncio.sleep(0.01)
    assert not fence.done()
    svc.apply_progress(orjson.loads(body), 3)
    await asyncio.wait_for(fence, 5)
    assert not svc._fences  # nothing kept
    svc.apply_progress(orjson.loads(body), 3)  # replayed after a restart: ignored


async def test_a_fence_not_applied_in_time_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    svc, _ = service(monkeypatch, timeout=0.05)
    with pytest.raises(FenceTimeout, match=r"channel WMS: .* not applied within 0.05s"):
        await svc.fence("WMS")
    assert not svc._fences
