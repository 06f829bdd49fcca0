"""Channel connectors' pure parts: CSV records from chunks, the field mapping, the channels file."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.connectors.config import ChannelsConfigError, load_channels, parse_channels
from stream_app.connectors.csv_rows import CsvFormatError, CsvRecord, CsvSplitter, csv_records
from stream_app.connectors.mapping import FieldMapping, RowMapper, map_row
from stream_app.records import Limits, parse_record


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read_all(data: bytes, size: int, start: int = 0, line: int = 1) -> list[tuple[list[str], int, int, int]]:
    async def run() -> list[tuple[list[str], int, int, int]]:
        return [
            (r.fields, r.line, r.end, r.next_line)
            async for r in csv_records(_chunks(data[start:], size), start=start, first_line=line)
        ]

    return asyncio.run(run())


cell = st.text(alphabet=st.sampled_from(list('ab,"\n\r é1 ')), max_size=6)
rows = st.lists(st.lists(cell, min_size=2, max_size=2), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(rows=rows, size=st.integers(1, 40), data=st.data())
def test_records_read_back_whatever_the_chunking_and_resume_anywhere(rows, size, data) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)  # \r\n: a cell with \r or \n is quoted
    raw = buffer.getvalue().encode()
    got = read_all(raw, size)
    assert [fields for fields, *_ in got] == rows  # two cells: never a blank line
    # resuming from any record's end with its next line gives exactly the rest
    if got:
        k = data.draw(st.integers(0, len(got) - 1))
        _, _, end, next_line = got[k]
        assert read_all(raw, size, start=end, line=next_line) == got[k + 1 :]
    # the line numbers count physical lines
    for _fields, line, end, next_line in got:
        assert raw[:end].count(b"\n") + (0 if raw[:end].endswith(b"\n") else 1) == next_line - 1
        assert line <= next_line - 1


def test_a_quoted_newline_is_one_record_with_its_line_and_offset() -> None:
    data = b'sku,qty\r\nA,"two\nlines"\n\nB,3'
    assert read_all(data, 3) == [
        (["sku", "qty"], 1, 9, 2),
        (["A", "two\nlines"], 2, 23, 4),
        (["B", "3"], 5, len(data), 6),
    ]


def test_a_bom_is_skipped_and_bad_bytes_name_their_line() -> None:
    assert read_all(b"\xef\xbb\xbfsku\nA\n", 2)[0][0] == ["sku"]
    with pytest.raises(CsvFormatError, match="line 2: not utf-8"):
        read_all(b"sku\n\xff\xfe\n", 4)


MAPPING = FieldMapping.model_validate(
    {"fields": {"sku": "SKU", "location": "Store", "onHand": "Qty", "updatedAt": "When"},
     "defaults": {"reserved": 0}, "buffer": 2, "dateFormat": "%d/%m/%Y %H:%M",
     "timezone": "Europe/Paris"}
)


def test_a_good_row_maps_to_a_record_the_topic_accepts() -> None:
    record, reasons = map_row(
        {"SKU": " A1 ", "Store": "S1", "Qty": "12", "When": "01/12/2026 10:00"}, MAPPING,
        channel="WMS", event_id="e1", default_updated_at="2026-12-01T00:00:00Z",
    )
    assert reasons == []
    assert record is not None
    parsed = parse_record(record)
    assert (parsed.sku, parsed.location, parsed.on_hand, parsed.buffer) == ("A1", "S1", 12, 2)  # type: ignore[union-attr]
    assert parsed.updated_at == "2026-12-01T09:00:00Z"  # Paris is UTC+1 in December


def test_a_bad_row_gives_every_reason() -> None:
    record, reasons = map_row(
        {"SKU": "", "Store": "S1", "Qty": "-3", "When": "tomorrow"}, MAPPING,
        channel="WMS", event_id="e1", default_updated_at="2026-12-01T00:00:00Z",
    )
    assert record is None
    assert any("SKU" in r for r in reasons) and any("tomorrow" in r for r in reasons)


def test_limits_apply_to_mapped_rows_and_a_missing_time_takes_the_sources() -> None:
    plain = FieldMapping.model_validate({"fields": {"sku": "s", "location": "l", "onHand": "q"}})
    record, _ = map_row({"s": "A", "l": "L", "q": "5"}, plain, channel="C", event_id="e",
                        default_updated_at="2026-12-01T08:00:00Z")
    assert record is not None and record["updatedAt"] == "2026-12-01T08:00:00Z"
    _, reasons = map_row({"s": "A", "l": "L", "q": "500"}, plain, channel="C", event_id="e",
                         default_updated_at="2026-12-01T08:00:00Z", limits=Limits(max_quantity=100))
    assert reasons == ["field 'onHand' exceeds the largest quantity 100"]


def test_channels_file_errors_name_where_they_are(tmp_path: Path) -> None:
    bad = {"channels": [
        {"name": "A", "kind": "s3", "bucket": "drops", "prefix": "in/new/", "archivePrefix": "in/",
         "mapping": {"fields": {"sku": "s", "location": "l", "onHand": "q"}}},
        {"name": "B", "kind": "rest", "url": "ftp://x", "mapping": {"fields": {"sku": "s", "size": "z"}}},
        {"name": "C", "kind": "s3", "bucket": "drops", "encoding": "utf-16",
         "mapping": {"fields": {"sku": "s", "location": "l", "onHand": "q"}}},
    ]}
    with pytest.raises(ChannelsConfigError) as err:
        parse_channels(bad)
    text = str(err.value)
    assert "channels[0]" in text and "inside archivePrefix" in text
    assert "channels[2].encoding" in text and "encoding 'utf-16' is not supported" in text
    ok = {"name": "W", "kind": "s3", "bucket": "drops", "prefix": "", "archivePrefix": "archive/",
          "mapping": {"fields": {"sku": "s", "location": "l", "onHand": "q"}}}
    assert parse_channels({"channels": [ok]}).channels[0].prefix == ""  # the whole bucket
    assert "channels[1].url" in text and "unknown record field(s) size" in text
    assert "no column or default for location, onHand" in text or "channels[1].mapping" in text
    path = tmp_path / "channels.yaml"
    path.write_text("channels: [\n")
    with pytest.raises(ChannelsConfigError, match=r"channels.yaml: not valid yaml"):
        load_channels(path)
    with pytest.raises(ChannelsConfigError, match="cannot read it"):
        load_channels(tmp_path / "missing.json")


def test_a_good_channels_file_loads_from_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "channels.yml"
    path.write_text(
        "channels:\n"
        "  - {name: WMS, kind: s3, bucket: drops, prefix: in/, archivePrefix: done/,\n"
        "     mapping: {fields: {sku: SKU, location: Store, onHand: Qty}}}\n"
        "  - {name: MP, kind: rest, url: 'http://127.0.0.1:1/stock', authEnv: MP_TOKEN,\n"
        "     mapping: {fields: {sku: sku, location: store, onHand: qty}}}\n"
    )
    with pytest.raises(ChannelsConfigError, match="MP_TOKEN"):
        load_channels(path)
    monkeypatch.setenv("MP_TOKEN", "s3cr3t")
    loaded = load_channels(path)
    assert [c.name for c in loaded.channels] == ["WMS", "MP"]
    assert "s3cr3t" not in repr(loaded.channels[1].auth_value())


IDS = ["A", " B ", "7", "x", "", "a|b", "Z" * 257, "2026-12-01T10:00:00"]
QUANTITIES = ["7", "0007", " 12 ", "0", "", "-1", "3.0", "x", "99999999999", "١٢", "9" * 5000,
              "0" * 30 + "7"]
TIMES = ["2026-12-01T10:00:00", "", "x", "01/12/2026 10:00", "7"]
COMPILED_MAPPINGS = [  # columns of identifiers and quantities only: the by-position path
    FieldMapping.model_validate(
        {"fields": {"sku": "SKU", "location": "Store", "onHand": "Qty", "reserved": "Held"}}),
    FieldMapping.model_validate(
        {"fields": {"sku": "SKU", "onHand": "Qty", "buffer": "Held"},
         "defaults": {"location": "DC-1", "reserved": "2"}}),
    FieldMapping.model_validate(
        {"fields": {"sku": "SKU", "location": "Store", "onHand": "Qty"}, "buffer": 3,
         "defaults": {"reserved": "x"}}),  # a bad default: every row by the slow path
    FieldMapping.model_validate(
        {"fields": {"sku": "SKU", "location": "Store", "onHand": "Qty"},
         "defaults": {"updatedAt": "2026-11-30T00:00:00Z"}}),  # a default time: the slow path
]


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(*[st.sampled_from(pool) for pool in (IDS, IDS, QUANTITIES, QUANTITIES, TIMES)]).map(list),
    st.sampled_from([MAPPING, FieldMapping.model_validate(
        {"fields": {"sku": "SKU", "location": "Store", "onHand": "Qty", "reserved": "Held",
                    "updatedAt": "When"}}), *COMPILED_MAPPINGS]),
    st.sampled_from(["2026-12-01T00:00:00Z", "2026-12-01T00:00:00", "yesterday"]),
    st.sampled_from(["e", "e" * 257]),
)
def test_the_compiled_mapper_answers_as_map_row(
    fields: list[str], mapping: FieldMapping, modified: str, event_id: str
) -> None:
    header = ["SKU", "Store", "Qty", "Held", "When"]
    mapper = RowMapper(mapping, header, channel="WMS", limits=Limits(max_quantity=10**6))
    expected = map_row(dict(zip(header, fields, strict=True)), mapping, channel="WMS", event_id=event_id,
                       default_updated_at=modified, limits=Limits(max_quantity=10**6))
    assert mapper.map(fields, event_id=event_id, default_updated_at=modified) == expected
    assert mapper.map(fields, event_id=event_id, default_updated_at=modified) == expected  # cached time


def test_the_by_position_path_answers_as_map_row_for_every_combination() -> None:
    """Exhaustive over the pools (a random draw rarely puts one bad value among good ones)."""
    header = ["SKU", "Store", "Qty", "Held", "When"]
    limits = Limits(max_quantity=10**6)
    for mapping in COMPILED_MAPPINGS[:2]:
        mapper = RowMapper(mapping, header, channel="WMS", limits=limits)
        assert mapper.compiled
        for sku, location, qty, held, event_id in itertools.product(
            IDS, IDS, QUANTITIES, QUANTITIES, ["e", "e" * 257]
        ):
            fields = [sku, location, qty, held, ""]
            expected = map_row(dict(zip(header, fields, strict=True)), mapping, channel="WMS",
                               event_id=event_id, default_updated_at="2026-12-01T00:00:00Z", limits=limits)
            got = mapper.map(fields, event_id=event_id, default_updated_at="2026-12-01T00:00:00Z")
            assert got == expected, fields


def test_the_by_position_path_takes_plain_rows_and_only_those() -> None:
    header = ["SKU", "Store", "Qty", "Held", "When"]
    good, bad_default = COMPILED_MAPPINGS[0], COMPILED_MAPPINGS[2]
    assert RowMapper(good, header, channel="WMS").compiled
    assert not RowMapper(bad_default, header, channel="WMS").compiled
    assert not RowMapper(MAPPING, header, channel="WMS").compiled  # a time column
    mapper = RowMapper(good, header, channel="WMS")
    row = ["A", "S1", "7", "0", ""]
    assert mapper._compiled(row, "e", "2026-12-01T00:00:00Z") == {
        "channel": "WMS", "reserved": "0", "eventId": "e", "sku": "A", "location": "S1", "onHand": "7",
        "updatedAt": "2026-12-01T00:00:00Z"}
    assert mapper._compiled(["A", "S1", "7.0", "0", ""], "e", "2026-12-01T00:00:00Z") is None
    assert mapper._compiled(["A", "", "7", "0", ""], "e", "2026-12-01T00:00:00Z") is None


def split_all(data: bytes, size: int, most: int, start: int = 0, line: int = 1) -> list[CsvRecord]:
    """Every record of ``data[start:]`` fed ``size`` bytes at a time, with a record cap of
    ``most`` bytes; checks the memory bound after every chunk."""
    splitter = CsvSplitter(start=start, first_line=line, max_record_bytes=most)
    out: list[CsvRecord] = []
    for i in range(start, len(data), size):
        out += splitter.feed(data[i : i + size])
        assert len(splitter.pending) <= most + size  # never a whole runaway record
    out += splitter.end()
    return out


def test_a_runaway_record_is_one_rejected_record_and_the_rows_after_it_are_read() -> None:
    """A stray quote would make the rest of a file one record held whole in memory: past
    max_record_bytes the record is given up, one record with the reason, ending at the
    first newline after the cap, and reading goes on from there."""
    rows = b"".join(b"R%d,%d\n" % (n, n) for n in range(20))
    data = b'sku,qty\nA,1\nB,"2\n' + rows + b"C,3\n"
    got = split_all(data, 7, most=64)
    assert [r.fields for r in got[:2]] == [["sku", "qty"], ["A", "1"]]
    bad = got[2]
    assert bad.line == 3 and bad.fields == [] and bad.error is not None
    assert "more than 64 bytes" in bad.error and f"line {bad.next_line - 1}" in bad.error
    cut = data.index(b"\n", data.index(b"B,") + 64) + 1  # the first newline after the cap
    assert bad.end == cut and bad.next_line == data[:cut].count(b"\n") + 1
    after = [r.fields for r in got[3:]]
    assert after[-1] == ["C", "3"] and all(len(f) == 2 for f in after)
    assert got[-1].line == data.count(b"\n")
    # a long line without quotes, and a file ending inside a runaway record
    long_line = b"sku,qty\n" + b"x" * 200 + b"\nD,4\n"
    assert [(r.fields, r.error is not None) for r in split_all(long_line, 13, most=64)] == [
        (["sku", "qty"], False), ([], True), (["D", "4"], False)]
    tail = split_all(b'sku,qty\nE,"' + b"y" * 100, 9, most=32)
    assert tail[-1].error is not None and tail[-1].end == len(b'sku,qty\nE,"') + 100


runaway_cell = st.text(alphabet=st.sampled_from(list('ab,"\n\r é')), max_size=30)


@settings(max_examples=200, deadline=None)
@given(cells=st.lists(runaway_cell, min_size=1, max_size=12), most=st.integers(4, 40),
       size=st.integers(1, 50), data=st.data())
def test_where_records_are_cut_does_not_depend_on_the_chunks(cells, most, size, data) -> None:
    """Any bytes (stray quotes included), any cap: every chunking gives the same records
    as one chunk, a read resumed at any record's end gives the rest, and memory stays
    within the cap plus a chunk."""
    raw = "\n".join(cells).encode()
    whole = split_all(raw, max(1, len(raw)), most)
    assert split_all(raw, size, most) == whole
    for record in whole:  # no record read holds more than the cap
        assert sum(len(field.encode()) for field in record.fields) <= most
    if whole:
        k = data.draw(st.integers(0, len(whole) - 1))
        assert split_all(raw, size, most, start=whole[k].end, line=whole[k].next_line) == whole[k + 1 :]
