"""Pre-order web endpoints (issue 4). Not built yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_app.app import Runtime


def register(runtime: Runtime) -> None:
    """Nothing registered yet."""
