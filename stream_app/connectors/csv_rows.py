"""CSV records from a stream of byte chunks, with where each one starts: never the whole
file in memory, and resumable from any record boundary (an S3 ranged GET from a byte
offset, the header given back).

A record ends at a newline outside double quotes (RFC 4180: a quoted field may hold
newlines and ``""`` escapes a quote), found on the BYTES, so the offset of every record is
exact. A chunk without any quote is split by lines and fields by the delimiter (about
twenty times faster than a csv reader per record); one with quotes goes record by record. That needs an encoding in which ``"``, ``\\n`` and ``\\r`` are single bytes that
never occur inside another character: UTF-8 and the 8-bit code pages (:data:`ENCODINGS`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

ENCODINGS = frozenset({"utf-8", "utf-8-sig", "ascii", "latin-1", "iso-8859-1", "cp1252"})
QUOTE, NEWLINE = 0x22, 0x0A


@dataclass(frozen=True, slots=True)
class CsvRecord:
    """One record: its fields, the 1-based line it starts on, and the byte offset and the
    line just after it (where a resumed read starts); ``error`` when its bytes are not in
    the file's encoding (its fields then hold replacement characters)."""

    fields: list[str]
    line: int
    end: int
    next_line: int
    error: str | None = None


def unsupported(encoding: str) -> str | None:
    """Why ``encoding`` cannot be read here (None: it can); the channels file checks it."""
    if encoding.lower() in ENCODINGS:
        return None
    return f"encoding {encoding!r} is not supported; use one of {sorted(ENCODINGS)}"


class CsvFormatError(ValueError):
    """The file cannot be read as CSV at all (bad encoding, no header)."""


def _decode(raw: bytes, encoding: str) -> tuple[str, str | None]:
    """The text of a record and, when its bytes are not ``encoding``, why (the record is
    then one rejected row, not the end of the file)."""
    try:
        return raw.decode(encoding), None
    except UnicodeDecodeError as exc:
        return raw.decode(encoding, "replace"), f"not {encoding}: {exc.reason}"


def _fields(text: str, delimiter: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter, strict=False))
    return rows[0] if rows else []


class CsvSplitter:
    """The records of a file fed chunk by chunk (which begin at byte ``start`` of the
    file, on line ``first_line``); blank lines are skipped, the last record may lack its
    newline. Its state is plain data (it pickles), so a file's parse can go on in
    another process chunk after chunk."""

    def __init__(self, *, encoding: str = "utf-8", start: int = 0, first_line: int = 1) -> None:
        problem = unsupported(encoding)
        if problem:
            raise CsvFormatError(problem)
        self.codec = "utf-8" if encoding.lower() == "utf-8-sig" else encoding
        self.pending = bytearray()
        self.quoted = False  # inside quotes at the end of ``pending``
        self.scanned = 0  # bytes of ``pending`` already scanned
        self.offset, self.line = start, first_line
        self.bom = encoding.lower().startswith("utf-8") and start == 0

    def feed(self, chunk: bytes, delimiter: str = ",") -> Iterator[CsvRecord]:
        """The records ``chunk`` completes."""
        pending = self.pending
        pending += chunk
        if self.bom:
            if len(pending) < 3 and pending == b"\xef\xbb\xbf"[: len(pending)]:
                return  # maybe a byte-order mark, not whole yet
            if pending.startswith(b"\xef\xbb\xbf"):
                del pending[:3]
                self.offset += 3
            self.bom = False
        codec = self.codec
        if not self.quoted and b'"' not in pending:  # fast path: every record is one line
            last = pending.rfind(b"\n")
            if last >= 0:
                line, offset = self.line, self.offset
                for raw in bytes(pending[: last + 1]).split(b"\n")[:-1]:
                    record_line = line
                    line += 1
                    offset += len(raw) + 1
                    text, error = _decode(raw, codec)
                    text = text.rstrip("\r")
                    if text.strip():
                        self.line, self.offset = line, offset
                        yield CsvRecord(text.split(delimiter), record_line, offset, line, error)
                self.line, self.offset = line, offset
                del pending[: last + 1]
            self.scanned = len(pending)
            return
        cut = 0
        i = self.scanned
        n = len(pending)
        while i < n:
            q = pending.find(b'"', i)
            nl = pending.find(b"\n", i)
            if self.quoted:
                if q < 0:
                    break
                self.quoted, i = False, q + 1
                continue
            if nl < 0 and q < 0:
                break
            if q >= 0 and (nl < 0 or q < nl):
                self.quoted, i = True, q + 1
                continue
            raw = bytes(pending[cut : nl + 1])
            record_line = self.line
            self.line += raw.count(b"\n")
            self.offset += len(raw)
            cut = i = nl + 1
            text, error = _decode(raw, codec)
            text = text.rstrip("\r\n")
            if text.strip():
                yield CsvRecord(_fields(text, delimiter), record_line, self.offset, self.line, error)
        del pending[:cut]
        self.scanned = len(pending)  # all of it, with ``quoted`` its state at the end

    def end(self, delimiter: str = ",") -> Iterator[CsvRecord]:
        """The last record, if it had no newline."""
        pending = self.pending
        if self.bom and pending.startswith(b"\xef\xbb\xbf"):
            del pending[:3]
            self.offset += 3
        if pending:
            raw = bytes(pending)
            text, error = _decode(raw, self.codec)
            text = text.rstrip("\r\n")
            pending.clear()
            self.offset += len(raw)
            self.line += 1
            if text.strip():
                yield CsvRecord(_fields(text, delimiter), self.line - 1, self.offset, self.line, error)


async def csv_records(
    chunks: AsyncIterator[bytes],
    *,
    encoding: str = "utf-8",
    delimiter: str = ",",
    start: int = 0,
    first_line: int = 1,
) -> AsyncIterator[CsvRecord]:
    """Every record of the chunks (:class:`CsvSplitter`, fed as they come); a record not
    in ``encoding`` is a :class:`CsvFormatError` naming its line."""
    splitter = CsvSplitter(encoding=encoding, start=start, first_line=first_line)
    async for chunk in chunks:
        for record in splitter.feed(chunk, delimiter):
            yield _checked(record)
    for record in splitter.end(delimiter):
        yield _checked(record)


def _checked(record: CsvRecord) -> CsvRecord:
    if record.error is not None:
        raise CsvFormatError(f"line {record.line}: {record.error}")
    return record
