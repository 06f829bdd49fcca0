"""Archiving a channel's file on a real moto S3 server: one CopyObject below the
threshold, a multipart copy (UploadPartCopy) above it, parts sized for S3's 10,000-part
limit, and an object replaced since it was listed left in place."""

from __future__ import annotations

import os

import pytest

from stream_app.connectors.s3_files import (
    COPY_PART_BYTES,
    MAX_PARTS,
    S3ChannelError,
    archive,
    copy_config,
    list_objects,
)
from stream_app.exports import S3Config, s3_client

MIB = 1 << 20


async def test_a_large_object_is_archived_by_a_multipart_copy(s3_config: S3Config) -> None:
    body = os.urandom(11 * MIB + 123)
    async with s3_client(s3_config) as client:
        await client.put_object(Bucket=s3_config.bucket, Key="in/big.csv", Body=body)
        (obj,) = await list_objects(client, s3_config, "in/", "done/")
        await archive(client, s3_config, obj, "done/big.csv", threshold=5 * MIB, part_bytes=5 * MIB)
        head = await client.head_object(Bucket=s3_config.bucket, Key="done/big.csv")
        assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
        got = await client.get_object(Bucket=s3_config.bucket, Key="done/big.csv")
        async with got["Body"] as stream:
            assert await stream.read() == body
        assert await list_objects(client, s3_config, "in/", "done/") == []  # source deleted


async def test_a_small_object_is_one_copy_and_a_gone_source_was_archived_before(
    s3_config: S3Config,
) -> None:
    async with s3_client(s3_config) as client:
        await client.put_object(Bucket=s3_config.bucket, Key="in/a.csv", Body=b"SKU\nA\n")
        (obj,) = await list_objects(client, s3_config, "in/", "done/")
        await archive(client, s3_config, obj, "done/a.csv")
        head = await client.head_object(Bucket=s3_config.bucket, Key="done/a.csv")
        assert head["ETag"].strip('"') == obj.etag  # one CopyObject keeps the ETag
        await archive(client, s3_config, obj, "done/a.csv")  # again after a crash: nothing to do


async def test_an_object_replaced_since_it_was_listed_is_left_for_the_next_poll(
    s3_config: S3Config,
) -> None:
    async with s3_client(s3_config) as client:
        await client.put_object(Bucket=s3_config.bucket, Key="in/a.csv", Body=b"SKU\nA\n")
        (old,) = await list_objects(client, s3_config, "in/", "done/")
        await client.put_object(Bucket=s3_config.bucket, Key="in/a.csv", Body=b"SKU\nB\n")
        with pytest.raises(S3ChannelError, match=r"copy s3://.*/in/a.csv"):
            await archive(client, s3_config, old, "done/a.csv")
        (new,) = await list_objects(client, s3_config, "in/", "done/")
        assert new.etag != old.etag  # the new drop is still there, to be ingested


def test_parts_stay_within_the_part_limit_at_any_size() -> None:
    for size in (0, 5 * MIB, 10 * (1 << 30), 5 * (1 << 40)):
        cfg = copy_config(size)
        assert cfg.multipart_chunksize >= COPY_PART_BYTES
        assert -(-size // cfg.multipart_chunksize) <= MAX_PARTS
