"""A CSV file cut into segments chunk by chunk (stream_app.connectors.csv_segments.cut):
the same segments however the bytes are chunked, the same remaining segments when a read
resumes at any segment's end (what a checkpoint records), every row in exactly one
segment; and the parse processes (agents.channel_files.Parser) answer as the loop does."""

from __future__ import annotations

import asyncio
import os
import signal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.channel_files import ParseError, Parser
from stream_app.connectors.csv_rows import CsvSplitter
from stream_app.connectors.csv_segments import FileCut, Segment, cut
from stream_app.connectors.mapping import FieldMapping
from stream_app.records import Limits

MAPPING = FieldMapping.model_validate(
    {"fields": {"sku": "SKU", "location": "Store", "onHand": "Qty"}, "defaults": {"reserved": 0}}
)
ROWS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["A", "B", '"C,1"', "D|x", ""]), st.sampled_from(["S1", "S2"]),
                  st.sampled_from(["1", "20", "-3", "x", '"7"'])).map(",".join),
        st.just(""),  # a blank line
        st.just("A,S1"),  # too few fields
        st.just('"multi\nline",S1,4'),  # a newline inside quotes
    ),
    max_size=60,
)


def csv_bytes(rows: list[str]) -> bytes:
    return ("SKU,Store,Qty\n" + "".join(f"{row}\n" for row in rows)).encode()


def start(data: bytes, offset: int = 0, line: int = 1, header: list[str] | None = None) -> FileCut:
    return FileCut(CsvSplitter(start=offset, first_line=line), MAPPING, "WMS", event_prefix="s3:WMS:e:",
                   modified="2026-12-01T00:00:00Z", size=len(data), envelope_records=3,
                   limits=Limits(max_quantity=1000), header=header, next_line=line)


def run(data: bytes, chunk: int, offset: int = 0, line: int = 1,
        header: list[str] | None = None) -> tuple[FileCut, list[Segment]]:
    state, segments = start(data, offset, line, header), []
    for at in range(offset, len(data), chunk):
        state, done = cut(state, data[at : at + chunk])
        segments.extend(done)
    state, done = cut(state, None)
    return state, [*segments, *done]


@settings(max_examples=150, deadline=None)
@given(ROWS, st.integers(1, 40))
def test_any_chunking_cuts_the_same_segments_and_every_row_is_in_one(rows: list[str], chunk: int) -> None:
    data = csv_bytes(rows)
    whole_state, whole = run(data, len(data) + 1)
    state, segments = run(data, chunk)
    assert segments == whole and state.header == whole_state.header == ["SKU", "Store", "Qty"]
    lines = []
    for segment in segments:
        records = orjson.loads(segment.body)["records"] if segment.body else []
        assert segment.good == len(records) and len(records) <= 3 and len(segment.bad) <= 3
        lines += [int(r["eventId"].rsplit(":", 1)[1]) for r in records] + [b["line"] for b in segment.bad]
    assert len(lines) == len(set(lines))  # no row twice
    non_blank = sum(1 for row in "\n".join(rows).replace('"multi\nline"', "m").split("\n") if row)
    assert len(lines) == (non_blank if rows else 0)  # every record, once
    assert all(a.end < b.end for a, b in zip(segments, segments[1:], strict=False))


@settings(max_examples=100, deadline=None)
@given(ROWS, st.integers(1, 40))
def test_a_read_resumed_at_any_segment_end_cuts_the_rest_the_same(rows: list[str], chunk: int) -> None:
    data = csv_bytes(rows)
    _, segments = run(data, chunk)
    for k, segment in enumerate(segments):
        _, rest = run(data, chunk, segment.end, segment.next_line, ["SKU", "Store", "Qty"])
        assert rest == segments[k + 1 :]


def test_a_line_not_in_the_encoding_is_a_rejected_row_and_the_file_goes_on() -> None:
    data = b"SKU,Store,Qty\nA,S1,1\nB,S\xff\xfe1,2\nC,S1,3\n"
    for chunk in (1, 5, len(data)):
        state, segments = run(data, chunk)
        records = [r for s in segments if s.body for r in orjson.loads(s.body)["records"]]
        assert [r["sku"] for r in records] == ["A", "C"] and state.error is None
        (bad,) = [b for s in segments for b in s.bad]
        assert bad["line"] == 3 and bad["reasons"] == ["not utf-8: invalid start byte"]
        assert bad["row"] == ["B", "S\ufffd\ufffd1", "2"]
    header_state, _ = cut(start(b"SK\xffU,Store,Qty\nA,S1,1\n"), b"SK\xffU,Store,Qty\nA,S1,1\n")
    assert header_state.error == "the header (line 1) is not utf-8: invalid start byte"


def test_a_header_without_a_mapped_column_is_the_file_error() -> None:
    data = b"SKU,Where,Qty\nA,S1,1\n"
    state, segments = cut(start(data), data)
    assert segments == [] and state.error == "the header has no column Store (line 1)"


async def test_the_parse_process_answers_as_the_loop_and_a_dead_one_is_replaced() -> None:
    data = csv_bytes([f"SKU-{n},S{n % 3},{n % 50}" if n % 7 else f"SKU-{n},S1,x" for n in range(2000)])
    inline, pooled = Parser(0), Parser(1)
    try:
        for parser in (inline, pooled):
            state, segments = start(data), []
            for at in range(0, len(data), 4096):
                state, done = await parser.cut(state, data[at : at + 4096])
                segments.extend(done)
            state, done = await parser.cut(state, None)
            segments.extend(done)
            if parser is inline:
                expected = segments
        assert segments == expected and len(expected) > 500
        assert pooled._pool is not None
        (process,) = pooled._pool._processes.values()  # type: ignore[attr-defined]
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.join, 10)
        with pytest.raises(ParseError, match="parse process died"):
            await pooled.cut(start(data), data)
        state, segments = await pooled.cut(start(data), data)  # a new pool
        assert segments == (await inline.cut(start(data), data))[1]
    finally:
        pooled.close()
