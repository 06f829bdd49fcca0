"""stream_app.broker.fetch_codec: the same bytes and structs as aiokafka's own Fetch v11 code."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.broker import fetch_codec

INT8 = st.integers(-(2**7), 2**7 - 1)
INT16 = st.integers(-(2**15), 2**15 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
NAMES = st.none() | st.text(max_size=12)


def arrays(of: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[Any]:
    """A Kafka array: a list or null."""
    return st.none() | st.lists(of, max_size=max_size)


REQUESTS = st.builds(
    FetchRequest_v11,
    INT32, INT32, INT32, INT32, INT8, INT32, INT32,
    arrays(st.tuples(NAMES, arrays(st.tuples(INT32, INT32, INT64, INT64, INT32), 6))),
    arrays(st.tuples(NAMES, arrays(INT32))),
    NAMES,
)

RESPONSES = st.builds(
    FetchResponse_v11,
    INT32, INT16, INT32,
    arrays(st.tuples(NAMES, arrays(st.tuples(
        INT32, INT16, INT64, INT64, INT64,
        arrays(st.tuples(INT64, INT64), 3),
        INT32,
        st.none() | st.binary(max_size=40),
    ), 6))),
)


@settings(max_examples=300, deadline=None)
@given(REQUESTS)
def test_a_request_encodes_to_aiokafkas_bytes(request: FetchRequest_v11) -> None:
    assert fetch_codec.encode_request(request) == fetch_codec.ORIGINAL_ENCODE(request)


@settings(max_examples=300, deadline=None)
@given(RESPONSES, st.binary(max_size=3), st.binary(max_size=3))
def test_a_response_decodes_to_aiokafkas_struct_and_position(
    response: FetchResponse_v11, before: bytes, after: bytes
) -> None:
    raw = before + response.encode() + after
    ours, theirs = BytesIO(raw), BytesIO(raw)
    ours.seek(len(before))
    theirs.seek(len(before))
    decoded = fetch_codec.decode_response(FetchResponse_v11, ours)
    expected = fetch_codec.ORIGINAL_DECODE(FetchResponse_v11, theirs)
    assert decoded == expected
    assert repr(decoded) == repr(expected)  # tuples stay tuples, lists lists
    assert ours.tell() == theirs.tell() == len(raw) - len(after)


@settings(max_examples=200, deadline=None)
@given(RESPONSES, st.data())
def test_a_response_cut_short_fails_as_aiokafkas_does(response: FetchResponse_v11, data: st.DataObject) -> None:
    raw = response.encode()
    cut = raw[: data.draw(st.integers(0, len(raw) - 1))]
    try:
        fetch_codec.ORIGINAL_DECODE(FetchResponse_v11, BytesIO(cut))
    except ValueError:
        theirs_failed = True
    else:  # a cut that still parses (trailing fields of an empty tail): the same result
        theirs_failed = False
    if theirs_failed:
        with pytest.raises(ValueError):
            fetch_codec.decode_response(FetchResponse_v11, BytesIO(cut))
    else:
        assert fetch_codec.decode_response(FetchResponse_v11, BytesIO(cut)) == \
            fetch_codec.ORIGINAL_DECODE(FetchResponse_v11, BytesIO(cut))


@pytest.mark.parametrize("bad", [
    {"isolation_level": 300},  # out of Int8's range
    {"max_wait_time": 1.5},  # not an integer
    {"topics": [("t", [(0, -1, 5, -1)])]},  # a partition entry one field short
    {"rack_id": object()},  # str() of anything, as aiokafka does
])
def test_what_the_fast_path_does_not_expect_goes_to_aiokafkas_own_code(bad: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "replica_id": -1, "max_wait_time": 10, "min_bytes": 1, "max_bytes": 1 << 20,
        "isolation_level": 0, "session_id": 0, "session_epoch": -1,
        "topics": [("t", [(0, -1, 5, -1, 1 << 20)])], "forgotten_topics_data": [],
        "rack_id": "",
    }
    request = FetchRequest_v11(**{**fields, **bad})
    try:
        expected: bytes | type[Exception] = fetch_codec.ORIGINAL_ENCODE(request)
    except Exception as exc:  # noqa: BLE001 - whatever aiokafka raises, we raise
        expected = type(exc)
    if isinstance(expected, bytes):
        assert fetch_codec.encode_request(request) == expected
    else:
        with pytest.raises(expected):
            fetch_codec.encode_request(request)


def test_install_makes_aiokafka_use_it() -> None:
    fetch_codec.install()
    assert fetch_codec.installed()
    request = FetchRequest_v11(-1, 10, 1, 100, 0, 0, -1, [("t", [(1, -1, 7, -1, 100)])], [], "")
    assert request.encode() == fetch_codec.ORIGINAL_ENCODE(request)
    response = FetchResponse_v11(0, 0, 0, [("t", [(1, 0, 9, 9, 0, None, -1, b"abc")])])
    assert FetchResponse_v11.decode(BytesIO(response.encode())) == response
