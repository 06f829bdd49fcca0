"""Fetch v11 requests and responses encoded and decoded in a few ``struct`` calls.

A worker's consumer sends ~100 fetches a second on the embedded broker (it holds each for
``fetch_max_wait_ms``, see docs/faust-findings.md), each listing every consumed partition
(40 with 8 partitions). aiokafka encodes and decodes them field by field through its
generic ``Schema``/``Array`` types, in Faust's consumer thread, which shares the GIL with
the agents and the web server: 190 µs to encode a request and 327 µs to decode an empty
response, measured here — most of an idle worker's CPU, and steps that a request on the
main thread waits behind.

:func:`install` replaces ``FetchRequest_v11.encode`` and ``FetchResponse_v11.decode``
(the version aiokafka 0.14 speaks to the embedded broker and to current Kafka) with
functions that produce the same bytes and the same structs (property-tested against
aiokafka's own, malformed input included); anything they do not expect (a value of the
wrong type or range) is handed to aiokafka's own code, which reports it as it always did.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import BytesIO
from typing import Any

from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_REQUEST_HEAD = struct.Struct(">iiiibii")  # replica, wait, min, max, isolation, session, epoch
_REQUEST_PARTITION = struct.Struct(">iiqqi")  # partition, leader epoch, offset, log start, max
_RESPONSE_HEAD = struct.Struct(">ihi")  # throttle, error, session
#: partition, error, highwater, last stable offset, log start, aborted transactions' count
_RESPONSE_PARTITION = struct.Struct(">ihqqqi")
_PARTITION_TAIL = struct.Struct(">ii")  # preferred read replica, records' length
#: an entry without aborted transactions, whole but for its records
_PARTITION_PLAIN = struct.Struct(">ihqqqiii")
_ABORTED = struct.Struct(">qq")  # producer id, first offset
_NULL = _I32.pack(-1)
_NULL_STRING = _I16.pack(-1)

#: aiokafka's own, kept for what the fast path does not handle and for the tests
ORIGINAL_ENCODE = FetchRequest_v11.encode
ORIGINAL_DECODE = FetchResponse_v11.decode.__func__  # type: ignore[attr-defined]


def _string(value: Any) -> bytes:
    if value is None:
        return _NULL_STRING
    raw = str(value).encode("utf-8")
    return _I16.pack(len(raw)) + raw


def encode_request(request: Any) -> bytes:
    """``request.encode()`` of a ``FetchRequest_v11``, the same bytes as aiokafka's."""
    try:
        return _encode_request(request.__dict__)
    except (struct.error, TypeError, ValueError, KeyError):
        return ORIGINAL_ENCODE(request)  # type: ignore[no-any-return]  # its own errors


def _encode_request(fields: dict[str, Any]) -> bytes:
    return b"".join((
        _REQUEST_HEAD.pack(
            fields["replica_id"], fields["max_wait_time"], fields["min_bytes"],
            fields["max_bytes"], fields["isolation_level"], fields["session_id"],
            fields["session_epoch"],
        ),
        _by_topic(fields["topics"], _fetched),
        _by_topic(fields["forgotten_topics_data"], _forgotten),
        _string(fields["rack_id"]),
    ))


def _by_topic(entries: Any, partitions: Callable[[Any], bytes]) -> bytes:
    """An array of (topic, array of partitions), either array null."""
    if entries is None:
        return _NULL
    out = [_I32.pack(len(entries))]
    for topic, items in entries:
        out.append(_string(topic))
        out.append(_NULL if items is None else partitions(items))
    return b"".join(out)


def _fetched(partitions: Any) -> bytes:
    pack = _REQUEST_PARTITION.pack
    return _I32.pack(len(partitions)) + b"".join(pack(*partition) for partition in partitions)


def _forgotten(partitions: Any) -> bytes:
    return struct.pack(f">i{len(partitions)}i", len(partitions), *partitions)


def decode_response(cls: type[FetchResponse_v11], data: BytesIO | bytes) -> FetchResponse_v11:
    """``FetchResponse_v11.decode(data)``: the same struct as aiokafka's, ``data`` left
    at the end of it; a response cut short raises ``ValueError`` as aiokafka's does."""
    if isinstance(data, bytes):
        data = BytesIO(data)
    start = data.tell()
    with data.getbuffer() as view:
        try:
            values, end = _decode_response(view, start)
        except struct.error as exc:
            raise ValueError(f"Buffer underrun decoding a fetch response: {exc}") from None
    data.seek(end)
    return cls(*values)


def _array_length(view: memoryview, pos: int) -> int:
    (length,) = _I32.unpack_from(view, pos)
    return int(length)


def _decode_response(view: memoryview, pos: int) -> tuple[tuple[Any, ...], int]:
    throttle, error, session = _RESPONSE_HEAD.unpack_from(view, pos)
    pos += _RESPONSE_HEAD.size
    count = _array_length(view, pos)
    pos += 4
    topics: list[tuple[Any, ...]] | None = None if count == -1 else []
    size = len(view)
    partition_head = _RESPONSE_PARTITION.unpack_from
    plain = _PARTITION_PLAIN.unpack_from
    for _ in range(max(count, 0)):
        (name_length,) = _I16.unpack_from(view, pos)
        pos += 2
        name: str | None = None
        if name_length >= 0:
            if pos + name_length > size:
                raise ValueError("Buffer underrun decoding string")
            name = bytes(view[pos : pos + name_length]).decode("utf-8")
            pos += name_length
        partition_count = _array_length(view, pos)
        pos += 4
        partitions: list[tuple[Any, ...]] | None = None if partition_count == -1 else []
        for _ in range(max(partition_count, 0)):
            if pos + _PARTITION_PLAIN.size <= size:  # most entries: no aborted transactions
                (partition, error_code, highwater, stable, log_start, aborted_count,
                 replica, records_length) = plain(view, pos)
            else:
                aborted_count = 1  # too short for that: the careful way reports where
            if aborted_count <= 0:
                aborted: list[tuple[int, int]] | None = None if aborted_count == -1 else []
                pos += _PARTITION_PLAIN.size
            else:
                partition, error_code, highwater, stable, log_start, aborted_count = (
                    partition_head(view, pos)
                )
                pos += _RESPONSE_PARTITION.size
                aborted = None if aborted_count == -1 else []
                for _ in range(max(aborted_count, 0)):
                    aborted.append(_ABORTED.unpack_from(view, pos))  # type: ignore[union-attr]
                    pos += _ABORTED.size
                replica, records_length = _PARTITION_TAIL.unpack_from(view, pos)
                pos += _PARTITION_TAIL.size
            records: bytes | None = None
            if records_length > 0:
                if pos + records_length > size:
                    raise ValueError("Buffer underrun decoding Bytes")
                records = bytes(view[pos : pos + records_length])
                pos += records_length
            elif records_length == 0:
                records = b""
            partitions.append((  # type: ignore[union-attr]
                partition, error_code, highwater, stable, log_start, aborted, replica, records
            ))
        topics.append((name, partitions))  # type: ignore[union-attr]
    return (throttle, error, session, topics), pos


def install() -> None:
    """Use the fast codec for every Fetch v11 of this process (idempotent)."""
    FetchRequest_v11.encode = encode_request  # type: ignore[method-assign]
    FetchResponse_v11.decode = classmethod(decode_response)  # type: ignore[method-assign,assignment,arg-type]


def installed() -> bool:
    return (
        FetchRequest_v11.encode is encode_request
        and getattr(FetchResponse_v11.decode, "__func__", None) is decode_response
    )
