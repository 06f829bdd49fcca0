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

    def _plainly_good(self, record: dict[str, Any]) -> bool:
        """A quick check that implies :func:`parse_record`'s (identifiers of plain text,
        quantities of ASCII digits within the limit, a known timestamp form); False
        means "ask parse_record", not "bad"."""
        most = self.limits.max_quantity
        for name in ("sku", "location"):
            value = record.get(name)
            if type(value) is not str or not value or "|" in value or len(value) > MAX_TEXT:
                return False
        for name in ("onHand", "reserved", "buffer"):
            value = record.get(name)
            if value is None and name == "buffer":
                continue
            if type(value) is str:
                if not (value.isascii() and value.isdigit() and int(value) <= most):
                    return False
            elif type(value) is not int or not 0 <= value <= most:
                return False
        if record.get("type", "STOCK") != "STOCK" or len(record["eventId"]) > MAX_TEXT:
            return False
        try:
            updated_at, updated_us = parse_timestamp(record["updatedAt"])
            self.limits.check_time(updated_at, updated_us)
        except BadRecord:
            return False
        return True

    def map(
        self, fields: list[str], *, event_id: str, default_updated_at: str
    ) -> tuple[dict[str, Any] | None, list[str]]:
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
