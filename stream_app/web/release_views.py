"""Release admin web endpoints (issue 5). Not built yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_app.app import Runtime


def register(runtime: Runtime) -> None:
    """Nothing registered yet."""
