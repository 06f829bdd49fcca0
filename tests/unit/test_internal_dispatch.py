"""The internal topic's dispatch table (agents.internal.dispatch_table): every kind has
the handler its flow registered, and a missing one stops the agent with its name."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest

from agents.internal import (
    BOOK_COMMAND,
    CHANNEL_PROGRESS,
    INVENTORY_APPLY,
    PREORDER_DECISIONS,
    PREORDER_ITEMS,
    RECONCILE,
    SYNC_ACK,
    dispatch_table,
)
from stream_app.app import InternalHandlers
from stream_app.settings import Settings
from stream_app.wiring import create_runtime


async def handler(event: faust.EventT) -> None:
    return None


def test_a_kind_without_handler_is_named() -> None:
    handlers = InternalHandlers(inventory_apply=handler, sync_ack=handler)
    with pytest.raises(RuntimeError, match="book-command.*preorder-decisions.*preorder-items"):
        dispatch_table(handlers)


def test_the_app_registers_a_handler_for_every_kind(tmp_path: Path) -> None:
    runtime = create_runtime(Settings(data_dir=tmp_path, _env_file=None))
    table = dispatch_table(runtime.internal_handlers)
    assert set(table) == {
        INVENTORY_APPLY, SYNC_ACK, PREORDER_ITEMS, PREORDER_DECISIONS, BOOK_COMMAND, CHANNEL_PROGRESS,
        RECONCILE,
    }
    assert table[INVENTORY_APPLY] is runtime.internal_handlers.inventory_apply
    assert table[BOOK_COMMAND] is runtime.internal_handlers.book_command
