"""The S3 side of a CSV channel (aioboto3): list new objects under a prefix, read one from
a byte offset in chunks (a ranged GET: never the whole object in memory), write JSON
beside the archive, archive (copy then delete). Errors raise :class:`S3ChannelError`
naming the bucket and key, never the credentials (:func:`stream_app.exports.s3_client`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from stream_app.exports import S3Config, describe_s3_error

CHUNK_BYTES = 1 << 20


class S3ChannelError(Exception):
    """An S3 call of a channel failed; the message never holds credentials."""


@dataclass(frozen=True, slots=True)
class S3Object:
    key: str
    etag: str
    size: int
    last_modified: datetime

    @property
    def modified_iso(self) -> str:
        return self.last_modified.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fail(what: str, cfg: S3Config, key: str, exc: BaseException) -> S3ChannelError:
    return S3ChannelError(
        f"S3 {what} s3://{cfg.bucket}/{key} failed: {describe_s3_error(exc, cfg)}"
    )


async def list_objects(client: Any, cfg: S3Config, prefix: str, skip: str) -> list[S3Object]:
    """Objects under ``prefix`` (not under ``skip``, not "folders"), oldest first."""
    found: list[S3Object] = []
    try:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=cfg.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                key = item["Key"]
                if key.endswith("/") or (skip and key.startswith(skip)):
                    continue
                found.append(
                    S3Object(
                        key,
                        str(item.get("ETag", "")).strip('"'),
                        int(item["Size"]),
                        item["LastModified"],
                    )
                )
    except (BotoCoreError, ClientError) as exc:
        raise _fail("list", cfg, prefix, exc) from None
    found.sort(key=lambda o: (o.last_modified, o.key))
    return found


async def read_from(
    client: Any, cfg: S3Config, obj: S3Object, offset: int, chunk_bytes: int = CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """The object's bytes from ``offset`` on, in chunks; fails if it changed (its ETag)."""
    if offset >= obj.size:
        return
    try:
        resp = await client.get_object(
            Bucket=cfg.bucket, Key=obj.key, Range=f"bytes={offset}-", IfMatch=f'"{obj.etag}"'
        )
        stream = resp["Body"]  # StreamingBody.read(amt); its context gives the raw response
        async with stream:
            while chunk := await stream.read(chunk_bytes):
                yield chunk
    except (BotoCoreError, ClientError) as exc:
        raise _fail("read", cfg, obj.key, exc) from None


async def put_json(client: Any, cfg: S3Config, key: str, payload: Any) -> str:
    try:
        await client.put_object(
            Bucket=cfg.bucket, Key=key, Body=orjson.dumps(payload), ContentType="application/json"
        )
    except (BotoCoreError, ClientError) as exc:
        raise _fail("put", cfg, key, exc) from None
    return f"s3://{cfg.bucket}/{key}"


async def get_json(client: Any, cfg: S3Config, key: str) -> Any:
    try:
        resp = await client.get_object(Bucket=cfg.bucket, Key=key)
        stream = resp["Body"]
        async with stream:
            return orjson.loads(await stream.read())
    except (BotoCoreError, ClientError) as exc:
        raise _fail("read", cfg, key, exc) from None


async def delete(client: Any, cfg: S3Config, key: str) -> None:
    try:
        await client.delete_object(Bucket=cfg.bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        raise _fail("delete", cfg, key, exc) from None


async def archive(client: Any, cfg: S3Config, obj: S3Object, dest: str) -> None:
    """Copy ``obj`` to ``dest`` then delete it (both idempotent: a crash between them
    copies again). A source already gone was archived before."""
    try:
        await client.copy_object(
            Bucket=cfg.bucket, Key=dest, CopySource={"Bucket": cfg.bucket, "Key": obj.key}
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return
        raise _fail("copy", cfg, obj.key, exc) from None
    except BotoCoreError as exc:
        raise _fail("copy", cfg, obj.key, exc) from None
    await delete(client, cfg, obj.key)
