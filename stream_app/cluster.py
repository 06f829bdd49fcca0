"""Worker-to-worker HTTP: the other workers of the app and a JSON GET with a deadline.

Each worker holds the state of the partitions it owns; an answer about the whole app
(``GET /sync``, ``GET /releases``, the nightly export) asks the others with
``?scope=local`` and merges. A worker that does not answer in time is reported
(``unreachable``), never waited for without end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

if TYPE_CHECKING:
    from stream_app.app import Runtime

Json = dict[str, Any]


def other_workers(runtime: Runtime) -> list[str]:
    app = runtime.app
    own = URL(str(app.conf.canonical_url))
    urls = {str(u) for u in app.router.tables_metadata()} if app.consumer else set()
    return sorted(u for u in urls if (URL(u).host, URL(u).port) != (own.host, own.port))


async def fetch_json(
    session: aiohttp.ClientSession, url: str, path: str, headers: dict[str, str] | None = None,
    seconds: float = 5.0, query: dict[str, str] | None = None,
) -> Json:
    try:
        async with session.get(
            URL(url).with_path(path).with_query({**(query or {}), "scope": "local"}),
            headers=headers or {},
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            if response.status != 200:
                return {"url": url, "unreachable": f"HTTP {response.status}"}
            body: Json = await response.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"url": url, "unreachable": f"{type(exc).__name__}: {exc}"}
