"""The S3 side of a CSV channel (aioboto3): list new objects under a prefix, read one from
a byte offset in chunks (a ranged GET: never the whole object in memory), write JSON
beside the archive, archive (copy then delete; a multipart copy above ``COPY_THRESHOLD``,
since one CopyObject stops at 5 GiB). Errors raise :class:`S3ChannelError`
naming the bucket and key, never the credentials (:func:`stream_app.exports.s3_client`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from stream_app.exports import S3Config, describe_s3_error

CHUNK_BYTES = 1 << 20
#: objects from this size on are archived by a multipart copy (UploadPartCopy); CopyObject
#: takes at most 5 GiB, and a long single copy is one request that can time out
COPY_THRESHOLD = 1 << 30
#: the smallest part of a multipart copy (S3 wants >= 5 MiB but the last)
COPY_PART_BYTES = 64 << 20
#: S3's limit of parts per multipart upload
MAX_PARTS = 10_000


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


async def list_keys(client: Any, cfg: S3Config, prefix: str) -> list[str]:
    """Every key under ``prefix``, in key order (all pages)."""
    keys: list[str] = []
    try:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=cfg.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", ()))
    except (BotoCoreError, ClientError) as exc:
        raise _fail("list", cfg, prefix, exc) from None
    return sorted(keys)


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


def copy_config(
    size: int, threshold: int = COPY_THRESHOLD, part_bytes: int = COPY_PART_BYTES
) -> TransferConfig:
    """A managed copy of ``size`` bytes: one CopyObject below ``threshold``, else parts of
    at least ``part_bytes``, larger when needed to stay within ``MAX_PARTS`` (5 TB: 500 MB)."""
    part = max(part_bytes, -(-size // MAX_PARTS))
    return TransferConfig(
        multipart_threshold=threshold, multipart_chunksize=part, max_concurrency=4
    )


async def delete_keys(client: Any, cfg: S3Config, keys: list[str]) -> None:
    """Delete ``keys`` (a DeleteObjects request per 1,000); a key already gone is fine."""
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        try:
            resp = await client.delete_objects(
                Bucket=cfg.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
        except (BotoCoreError, ClientError) as exc:
            raise _fail("delete", cfg, batch[0], exc) from None
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise S3ChannelError(
                f"S3 delete s3://{cfg.bucket}/{first.get('Key')} failed: {first.get('Code')} "
                f"({len(errors)} of {len(batch)} keys not deleted)"
            )


async def archive(
    client: Any,
    cfg: S3Config,
    obj: S3Object,
    dest: str,
    threshold: int = COPY_THRESHOLD,
    part_bytes: int = COPY_PART_BYTES,
) -> None:
    """Copy ``obj`` to ``dest`` then delete it (both idempotent: a crash between them
    copies again). A source already gone was archived before; one replaced since it was
    listed is left for the next poll (its new content is a new file). aioboto3's managed copy:
    CopyObject, or a multipart copy from ``threshold`` on (:func:`copy_config`)."""
    try:
        await client.copy(
            CopySource={"Bucket": cfg.bucket, "Key": obj.key},
            Bucket=cfg.bucket,
            Key=dest,
            ExtraArgs={"CopySourceIfMatch": f'"{obj.etag}"'},  # what was ingested, not a newer drop
            Config=copy_config(obj.size, threshold, part_bytes),
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return
        raise _fail("copy", cfg, obj.key, exc) from None
    except BotoCoreError as exc:
        raise _fail("copy", cfg, obj.key, exc) from None
    await delete(client, cfg, obj.key)
