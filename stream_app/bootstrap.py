"""Topic bootstrap: every topic the app uses exists with the configured partition count.

Runs before any agent starts. Idempotent against an existing cluster; an existing topic
with another partition count stops start-up with a clear error (Faust would otherwise
fail later with ``PartitionsMismatch`` or, worse, route keys to the wrong partition).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


class TopicMismatchError(RuntimeError):
    """An existing topic has a partition count other than the configured one."""


async def existing_partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    listed = set(await admin.list_topics())
    wanted = [name for name in names if name in listed]
    if not wanted:
        return found
    for description in await admin.describe_topics(wanted):
        if description.get("error_code", 0) == 0:
            found[description["topic"]] = len(description["partitions"])
    return found


async def ensure_topics(
    bootstrap_servers: str,
    names: list[str],
    partitions: int,
    replication_factor: int = 1,
    connect_within: float = 30.0,
) -> list[str]:
    """Create missing topics; returns the names created. Raises TopicMismatchError."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    deadline = asyncio.get_running_loop().time() + connect_within
    while True:
        try:
            await admin.start()
            break
        except KafkaError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        unique = list(dict.fromkeys(names))
        current = await existing_partitions(admin, unique)
        wrong = {name: count for name, count in current.items() if count != partitions}
        if wrong:
            details = ", ".join(f"{name} has {count}" for name, count in sorted(wrong.items()))
            raise TopicMismatchError(
                f"existing topics have the wrong partition count ({details}; expected "
                f"{partitions} from STREAM_APP_PARTITIONS): recreate them or set "
                "STREAM_APP_PARTITIONS to match"
            )
        missing = [name for name in unique if name not in current]
        if missing:
            try:
                response = await admin.create_topics(
                    [NewTopic(name, partitions, replication_factor) for name in missing]
                )
            except TopicAlreadyExistsError:
                response = None  # another worker created them at the same time
            for error in getattr(response, "topic_errors", None) or []:
                name, code = error[0], error[1]
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise RuntimeError(f"could not create topic {name}: error code {code}")
            log.info("created topics: %s", ", ".join(missing))
        return missing
    finally:
        await admin.close()
