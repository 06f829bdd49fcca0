"""A channel's field mapping: one upstream row (a CSV line, a REST record) → one inventory
record in the shape of the ``inventory-changes`` topic (SPEC section 7), or the reasons
it cannot be one. Pure: no I/O, no clock (a row without a timestamp takes the one its
source gives: the object's ``LastModified``, the page's fetch time).

The record the mapping builds is checked by :func:`stream_app.records.parse_record`, the
same check every topic message gets, so a row a connector accepts is a record the
inventory agent applies, and a row it rejects says why in the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stream_app.records import (
    MAX_TEXT,
    NO_LIMITS,
    BadRecord,
    Limits,
    parse_quantity,
    parse_record,
    parse_timestamp,
)

#: the record fields a mapping may fill (``channel`` and ``eventId`` come from the channel
#: and the row's place in its source unless a column gives them)
RECORD_FIELDS = frozenset(
    {"sku", "location", "onHand", "reserved", "buffer", "updatedAt", "eventId", "type"}
)
REQUIRED_FIELDS = ("sku", "location", "onHand")
_IDS = ("sku", "location")
_QUANTITIES = ("onHand", "reserved", "buffer")


class FieldMapping(BaseModel):
    """``fields``: record field → source column (or JSON key); ``defaults``: record field →
    value when the column is absent or empty; ``buffer``: the channel's buffer when no
    column gives one; ``dateFormat``: ``strptime`` format of the ``updatedAt`` column
    (absent: ISO 8601 or epoch milliseconds); ``timezone``: the zone of naive timestamps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: dict[str, str]
    defaults: dict[str, Any] = Field(default_factory=dict)
    buffer: int | None = Field(None, ge=0)
    date_format: str | None = Field(None, alias="dateFormat")
    timezone: str = "UTC"

    @field_validator("fields", "defaults")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - RECORD_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown record field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(RECORD_FIELDS))}"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _required(self) -> FieldMapping:
        missing = [f for f in REQUIRED_FIELDS if f not in self.fields and f not in self.defaults]
        if missing:
            raise ValueError(f"no column or default for {', '.join(missing)}")
        if self.date_format is not None:
            try:
                datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).strftime(self.date_format)
            except ValueError as exc:
                raise ValueError(f"dateFormat {self.date_format!r}: {exc}") from None
        return self

    def columns(self) -> set[str]:
        return set(self.fields.values())


def _plain_id(value: Any) -> bool:
    """An identifier :func:`parse_record` takes as it is (plain text, no key separator)."""
    return type(value) is str and bool(value) and "|" not in value and len(value) <= MAX_TEXT


def _plain_digits(value: str) -> bool:
    """ASCII digits short enough for ``int()`` (Python refuses strings of over 4,300
    digits; a longer one is for :func:`parse_quantity` to refuse, with its reason)."""
    return len(value) <= 20 and value.isascii() and value.isdigit()


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def map_row(
    row: Mapping[str, Any],
    mapping: FieldMapping,
    *,
    channel: str,
    event_id: str,
    default_updated_at: str,
    limits: Limits = NO_LIMITS,
) -> tuple[dict[str, Any] | None, list[str]]:
    """(the record, []) or (None, every reason the row is bad)."""
    record: dict[str, Any] = {"channel": channel, "eventId": event_id, "reserved": 0}
    if mapping.buffer is not None:
        record["buffer"] = mapping.buffer
    record.update(mapping.defaults)
    reasons: list[str] = []
    for target, column in mapping.fields.items():
        value = row.get(column)
        if not _empty(value):
            record[target] = value.strip() if isinstance(value, str) else value
        elif target in REQUIRED_FIELDS and target not in mapping.defaults:
            reasons.append(f"column '{column}' ({target}) is empty or missing")
    stamp = record.get("updatedAt")
    if _empty(stamp):
        record["updatedAt"] = default_updated_at
    elif mapping.date_format is not None and isinstance(stamp, str):
        try:
            moment = datetime.strptime(stamp, mapping.date_format)  # noqa: DTZ007 - zone below
        except ValueError:
            reasons.append(
                f"column '{mapping.fields.get('updatedAt', 'updatedAt')}' (updatedAt) "
                f"{stamp[:40]!r} does not match {mapping.date_format!r}"
            )
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=ZoneInfo(mapping.timezone))
            record["updatedAt"] = moment.isoformat()
    elif mapping.timezone != "UTC" and isinstance(stamp, str):
        try:
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            pass  # parse_record names it
        else:
            if moment.tzinfo is None:
                record["updatedAt"] = moment.replace(tzinfo=ZoneInfo(mapping.timezone)).isoformat()
    for name in ("onHand", "reserved", "buffer"):
        if name in record and not (name == "buffer" and record[name] is None):
            try:
                parse_quantity(record[name], name, limits.max_quantity)
            except BadRecord as exc:
                reasons.append(str(exc))
    try:
        parse_timestamp(record["updatedAt"])
    except BadRecord as exc:
        reasons.append(str(exc))
    if reasons:
        return None, reasons
    try:
        parse_record(record, limits)
    except BadRecord as exc:
        return None, [str(exc)]
    return record, []


class RowMapper:
    """:func:`map_row` compiled for one header: fields taken by position, one check (the
    topic's own, :func:`~stream_app.records.parse_record`), and only for a row it refuses
    the slow path that names every reason. Same results as :func:`map_row`."""

    def __init__(
        self, mapping: FieldMapping, header: list[str], *, channel: str, limits: Limits = NO_LIMITS
    ) -> None:
        self.mapping, self.header, self.channel, self.limits = mapping, header, channel, limits
        position = {name: i for i, name in enumerate(header)}
        self.columns = [(target, position[column]) for target, column in mapping.fields.items()]
        self.base: dict[str, Any] = {"channel": channel, "reserved": 0}
        if mapping.buffer is not None:
            self.base["buffer"] = mapping.buffer
        self.base.update(mapping.defaults)
        # the fast path only when nothing needs converting first
        self.plain_time = mapping.date_format is None and mapping.timezone == "UTC"
        # the compiled path: columns of identifiers and quantities only, every one filled,
        # defaults that do not stand for the row's own id, time or kind; what does not
        # come from a column is checked once here
        self.targets = [target for target, _ in self.columns]
        self.ids = [n for n, target in enumerate(self.targets) if target in _IDS]
        self.quantities = [n for n, target in enumerate(self.targets) if target in _QUANTITIES]
        rest = {k: v for k, v in self.base.items() if k not in self.targets}
        self.compiled = (
            self.plain_time
            and set(self.targets) <= {*_IDS, *_QUANTITIES}
            and not set(mapping.defaults) & {"eventId", "updatedAt", "type"}
            and all(_plain_id(rest.get(n)) for n in _IDS if n not in self.targets)
            and all(self._plain_quantity(n, rest.get(n)) for n in _QUANTITIES if n not in self.targets)
        )
        self._time: tuple[str, bool] = ("", False)  # the last default updatedAt, and if good

    def _plain_quantity(self, name: str, value: Any) -> bool:
        if value is None and name == "buffer":
            return True
        if type(value) is str:
            return _plain_digits(value) and int(value) <= self.limits.max_quantity
        return type(value) is int and 0 <= value <= self.limits.max_quantity

    def _plain_time(self, value: Any) -> bool:
        try:
            updated_at, updated_us = parse_timestamp(value)
            self.limits.check_time(updated_at, updated_us)
        except BadRecord:
            return False
        return True

    def _plainly_good(self, record: dict[str, Any]) -> bool:
        """A quick check that implies :func:`parse_record`'s (identifiers of plain text,
        quantities of ASCII digits within the limit, a known timestamp form); False
        means "ask parse_record", not "bad"."""
        return (
            all(_plain_id(record.get(name)) for name in _IDS)
            and all(self._plain_quantity(name, record.get(name)) for name in _QUANTITIES)
            and record.get("type", "STOCK") == "STOCK"
            and len(record["eventId"]) <= MAX_TEXT
            and self._plain_time(record["updatedAt"])
        )

    def _compiled(
        self, fields: list[str], event_id: str, default_updated_at: str
    ) -> dict[str, Any] | None:
        """The record of a row whose every mapped column is filled and plainly good (the
        per-row part of :meth:`_plainly_good`, by position), else None."""
        values = [fields[i].strip() for _, i in self.columns]
        if not all(values) or len(event_id) > MAX_TEXT:
            return None
        for n in self.ids:
            if "|" in values[n] or len(values[n]) > MAX_TEXT:
                return None
        most = self.limits.max_quantity
        for n in self.quantities:
            value = values[n]
            if not (_plain_digits(value) and int(value) <= most):
                return None
        if self._time[0] != default_updated_at:
            self._time = (default_updated_at, self._plain_time(default_updated_at))
        if not self._time[1]:
            return None
        record = dict(self.base)
        record["eventId"] = event_id
        record.update(zip(self.targets, values, strict=True))
        record["updatedAt"] = default_updated_at
        return record

    def map(
        self, fields: list[str], *, event_id: str, default_updated_at: str
    ) -> tuple[dict[str, Any] | None, list[str]]:
        if self.compiled:
            compiled = self._compiled(fields, event_id, default_updated_at)
            if compiled is not None:
                return compiled, []
        if self.plain_time:
            record = dict(self.base)
            record["eventId"] = event_id
            for target, i in self.columns:
                value = fields[i].strip()
                if value:
                    record[target] = value
            if "updatedAt" not in record:
                record["updatedAt"] = default_updated_at
            if self._plainly_good(record):
                return record, []
            try:
                parse_record(record, self.limits)
            except BadRecord:
                pass  # the slow path says every reason
            else:
                return record, []
        return map_row(
            dict(zip(self.header, fields, strict=True)), self.mapping, channel=self.channel,
            event_id=event_id, default_updated_at=default_updated_at, limits=self.limits,
        )
