"""The embedded broker of ``stream-app run``: a broker left over from an earlier run on
our port is recognised and replaced; anything else on the port is refused."""

from __future__ import annotations

import os
import socket
import time

import pytest

from stream_app.embedded import EmbeddedBroker, EmbeddedBrokerError, free_port, port_open

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped by its parent yet) is gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_leftover_broker_is_replaced_and_a_stranger_on_the_port_refused() -> None:
    port = free_port()
    earlier = EmbeddedBroker(port=port).start()
    assert earlier._proc is not None
    orphan = earlier._proc.pid
    earlier._proc = None  # its run died without stopping it: an orphan holding the port
    current = EmbeddedBroker(port=port)
    try:
        current.start()
        deadline = time.monotonic() + 10
        while alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(orphan), "the leftover broker still runs"
        assert current.running and port_open("127.0.0.1", port)
    finally:
        current.stop()
        if alive(orphan):
            os.kill(orphan, 9)

    stranger = socket.socket()
    stranger.bind(("127.0.0.1", port))
    stranger.listen()
    try:
        with pytest.raises(EmbeddedBrokerError, match="already in use"):
            EmbeddedBroker(port=port).start()
    finally:
        stranger.close()
