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
#: bytes one record may take before it is given up as a rejected row: an unclosed quote
#: would otherwise make the rest of the file one record, all of it held in memory
MAX_RECORD_BYTES = 1 << 20


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


def _fields(text: str, delimiter: str, error: str | None) -> tuple[list[str], str | None]:
    """The fields of a record read where quotes may be (and why it cannot be read, with
    ``error`` first). Without a quote, split as the quote-free path splits (a bare CR
    included); csv refuses a CR in an unquoted field of a record with quotes: then a
    rejected record, not an error that stops the file at the same line on every poll."""
    if '"' not in text:
        return text.split(delimiter), error
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter, strict=False))
    except csv.Error as exc:
        return [], error or f"unreadable CSV: {exc}"
    return (rows[0] if rows else []), error


class CsvSplitter:
    """The records of a file fed chunk by chunk (which begin at byte ``start`` of the
    file, on line ``first_line``); blank lines are skipped, the last record may lack its
    newline. Its state is plain data (it pickles), so a file's parse can go on in
    another process chunk after chunk."""

    def __init__(
        self,
        *,
        encoding: str = "utf-8",
        start: int = 0,
        first_line: int = 1,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        problem = unsupported(encoding)
        if problem:
            raise CsvFormatError(problem)
        self.codec = "utf-8" if encoding.lower() == "utf-8-sig" else encoding
        self.pending = bytearray()
        self.quoted = False  # inside quotes at the end of ``pending``
        self.scanned = 0  # bytes of ``pending`` already scanned
        self.offset, self.line = start, first_line
        self.bom = encoding.lower().startswith("utf-8") and start == 0
        self.max_record_bytes = max_record_bytes
        #: the line a record given up for its size started on, while the rest of its
        #: line is skipped (None: not skipping)
        self.skipping: int | None = None

    def feed(self, chunk: bytes, delimiter: str = ",") -> Iterator[CsvRecord]:
        """The records ``chunk`` completes; a record longer than ``max_record_bytes`` is
        one record with an ``error``, ending at the first newline after it (whatever the
        quotes), and memory never holds more than that many bytes of it."""
        pending = self.pending
        pending += chunk
        if self.bom:
            if len(pending) < 3 and pending == b"\xef\xbb\xbf"[: len(pending)]:
                return  # maybe a byte-order mark, not whole yet
            if pending.startswith(b"\xef\xbb\xbf"):
                del pending[:3]
                self.offset += 3
            self.bom = False
        most = self.max_record_bytes
        while True:
            if self.skipping is not None:
                skipped = self._skip()
                if skipped is None:
                    return
                yield skipped
            yield from self._split(delimiter)
            if len(pending) <= most:
                return
            # what is pending starts with a record longer than a record may be: give up
            # its first max_record_bytes, then skip to the next newline (_skip)
            self.skipping = self.line
            self.line += pending.count(b"\n", 0, most)
            self.offset += most
            del pending[:most]
            self.quoted, self.scanned = False, 0

    def _skip(self, at_end: bool = False) -> CsvRecord | None:
        """Drop what is pending up to the first newline: then the record given up for its
        size ends (the rejected record); None while no newline came (unless ``at_end``)."""
        pending = self.pending
        newline = pending.find(b"\n")
        if newline < 0 and not at_end:
            self.offset += len(pending)
            pending.clear()
            return None
        taken = len(pending) if newline < 0 else newline + 1
        self.offset += taken
        self.line += 1
        del pending[:taken]
        first = self.skipping if self.skipping is not None else self.line - 1
        self.skipping = None
        error = (f"a record of more than {self.max_record_bytes:,} bytes (an unclosed quote?): "
                 f"skipped to the end of line {self.line - 1}")
        return CsvRecord([], first, self.offset, self.line, error)

    def _split(self, delimiter: str) -> Iterator[CsvRecord]:
        """The records that end in what is pending, up to one longer than
        ``max_record_bytes`` (left pending, for :meth:`feed` to give up: where a record is
        cut must not depend on how the file came in chunks)."""
        pending = self.pending
        codec = self.codec
        most = self.max_record_bytes
        if not self.quoted and b'"' not in pending:  # fast path: every record is one line
            last = pending.rfind(b"\n")
            if last >= 0:
                line, offset, taken = self.line, self.offset, 0
                for raw in bytes(pending[: last + 1]).split(b"\n")[:-1]:
                    if len(raw) >= most:  # with its newline, longer than a record may be
                        break
                    record_line = line
                    line += 1
                    offset += len(raw) + 1
                    taken += len(raw) + 1
                    text, error = _decode(raw, codec)
                    text = text.rstrip("\r")
                    if text.strip():
                        self.line, self.offset = line, offset
                        yield CsvRecord(text.split(delimiter), record_line, offset, line, error)
                self.line, self.offset = line, offset
                del pending[:taken]
            self.scanned = len(pending) if pending.find(b"\n") < 0 else 0
            return
        cut = 0
        i = self.scanned
        n = len(pending)
        too_long = False
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
            if nl + 1 - cut > most:  # left pending: given up by feed
                too_long = True
                break
            raw = bytes(pending[cut : nl + 1])
            record_line = self.line
            self.line += raw.count(b"\n")
            self.offset += len(raw)
            cut = i = nl + 1
            text, error = _decode(raw, codec)
            text = text.rstrip("\r\n")
            if text.strip():
                fields, error = _fields(text, delimiter, error)
                yield CsvRecord(fields, record_line, self.offset, self.line, error)
        del pending[:cut]
        if too_long:  # scanned again from its start (outside quotes) once given up
            self.quoted, self.scanned = False, 0
        else:
            self.scanned = len(pending)  # all of it, with ``quoted`` its state at the end

    def end(self, delimiter: str = ",") -> Iterator[CsvRecord]:
        """The last record, if it had no newline."""
        pending = self.pending
        if self.skipping is not None:  # the file ended inside a record given up
            skipped = self._skip(at_end=True)
            if skipped is not None:
                yield skipped
            return
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
                fields, error = _fields(text, delimiter, error)
                yield CsvRecord(fields, self.line - 1, self.offset, self.line, error)


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
