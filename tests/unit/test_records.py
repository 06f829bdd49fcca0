"""Parsing raw inventory messages: good records, and every bad one with its reason."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.partitioning import partition_for
from stream_app.records import (
    ExpectedArrival,
    StockChange,
    from_wire,
    parse_message,
    to_wire,
)

GOOD = {"eventId": "e1", "channel": "WMS", "sku": "S1", "location": "L1", "onHand": "12",
        "reserved": 2.0, "updatedAt": "2026-11-20T10:00:00Z"}


def test_single_record_with_numeric_strings() -> None:
    good, bad = parse_message(orjson.dumps(GOOD), 10_000)
    assert bad == [] and len(good) == 1
    rec = good[0]
    assert isinstance(rec, StockChange) and rec.on_hand == 12 and rec.reserved == 2 and rec.buffer is None
    assert rec.key == "S1|L1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"nope", "not JSON"),
        (b"42", "not a JSON object"),
        (orjson.dumps({**GOOD, "onHand": None}), "missing field 'onHand'"),
        (orjson.dumps({**GOOD, "onHand": "x"}), "not a number"),
        (orjson.dumps({**GOOD, "onHand": -1}), "negative"),
        (orjson.dumps({**GOOD, "onHand": 1.5}), "whole number"),
        (orjson.dumps({**GOOD, "onHand": True}), "not a number"),
        (orjson.dumps({**GOOD, "updatedAt": "tomorrow"}), "timestamp"),
        (orjson.dumps({**GOOD, "type": "WAT"}), "unknown type"),
        (orjson.dumps({**GOOD, "sku": ""}), "'sku'"),
        (orjson.dumps({**GOOD, "sku": "A|B"}), "'|'"),
        (orjson.dumps({"records": "x"}), "must be a list"),
    ],
)
def test_bad_messages_are_rejected_with_reason(raw: bytes, reason: str) -> None:
    good, bad = parse_message(raw, 10_000)
    assert good == [] and len(bad) == 1
    assert reason in bad[0].reason
    assert bad[0].original == raw


def test_oversized_message() -> None:
    raw = orjson.dumps({**GOOD, "pad": "x" * 2000})
    good, bad = parse_message(raw, 1024)
    assert good == [] and "exceeds 1024" in bad[0].reason


def test_envelope_splits_and_keeps_good_neighbours() -> None:
    expected = {"eventId": "p", "type": "EXPECTED", "ref": "PO", "sku": "S1", "location": "L1",
                "quantity": 5, "expectedOn": "2026-12-01T00:00:00Z", "updatedAt": 1}
    raw = orjson.dumps({"records": [GOOD, {"bad": True}, expected]})
    good, bad = parse_message(raw, 10_000)
    assert [type(r) for r in good] == [StockChange, ExpectedArrival]
    assert good[1].expected_on == "2026-12-01"  # type: ignore[union-attr]
    assert len(bad) == 1 and bad[0].reason.startswith("records[1]:")
    assert orjson.loads(bad[0].original) == {"bad": True}


def test_wire_round_trip() -> None:
    good, _ = parse_message(orjson.dumps({"records": [GOOD, {**GOOD, "type": "DELETE"}]}), 10_000)
    for record in good:
        assert from_wire(orjson.loads(orjson.dumps(to_wire(record)))) == record


@given(st.text(min_size=1, max_size=30), st.integers(1, 64))
def test_partition_matches_kafka_default_partitioner(key: str, partitions: int) -> None:
    from aiokafka.partitioner import DefaultPartitioner

    expected = DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions)))
    assert partition_for(key, partitions) == expected


@given(st.binary(max_size=64))
def test_kafka_murmur2_in_c_equals_the_pure_python_reference(data: bytes) -> None:
    from aiokafka.partitioner import murmur2

    from stream_app.partitioning import kafka_murmur2

    assert kafka_murmur2(data) == int(murmur2(data)) & 0xFFFFFFFF


def test_quantities_beyond_what_the_product_stores_are_rejected() -> None:
    from stream_app.records import MAX_QUANTITY

    for value in (1e308, MAX_QUANTITY + 1, str(10**12)):
        good, bad = parse_message(orjson.dumps({**GOOD, "onHand": value}), 10_000)
        assert good == [] and "exceeds the largest quantity" in bad[0].reason, value
    good, bad = parse_message(orjson.dumps({**GOOD, "onHand": MAX_QUANTITY}), 10_000)
    assert bad == [] and good[0].on_hand == MAX_QUANTITY  # type: ignore[union-attr]


def test_an_update_from_the_future_is_rejected_beyond_the_allowed_skew() -> None:
    from stream_app.records import Limits, parse_timestamp

    _, sent_us = parse_timestamp("2026-11-20T10:00:00Z")
    limits = Limits(max_skew_us=300_000_000, sent_at_us=sent_us)
    ahead = {**GOOD, "updatedAt": "2026-11-20T10:05:01Z"}
    good, bad = parse_message(orjson.dumps(ahead), 10_000, limits)
    assert good == [] and "ahead of the message timestamp" in bad[0].reason
    within = {**GOOD, "updatedAt": "2026-11-20T10:05:00Z"}
    assert parse_message(orjson.dumps(within), 10_000, limits)[1] == []
    far = {**GOOD, "updatedAt": "2099-01-01T00:00:00Z"}  # no timestamp known: not checked
    assert parse_message(orjson.dumps(far), 10_000, Limits(sent_at_us=None))[1] == []
    envelope = {"records": [GOOD | {"updatedAt": "2026-11-20T09:00:00Z"}, far]}
    good, bad = parse_message(orjson.dumps(envelope), 10_000, limits)
    assert len(good) == 1 and bad[0].reason.startswith("records[1]: field 'updatedAt'")


def test_identifiers_are_bounded() -> None:
    good, bad = parse_message(orjson.dumps({**GOOD, "sku": "S" * 257}), 10_000)
    assert good == [] and bad[0].reason == "field 'sku' is longer than 256 characters"
    assert parse_message(orjson.dumps({**GOOD, "sku": "S" * 256}), 10_000)[1] == []
