"""The channels file (``STREAM_APP_CHANNELS_FILE``, JSON or YAML): which connectors run.

::

    channels:
      - name: WMS-CSV            # the record's ``channel``; one poller across all workers
        kind: s3
        bucket: drops
        prefix: wms/incoming/
        archivePrefix: wms/archive/     # processed files; the rejection report goes beside
        mapping: {fields: {sku: SKU, location: Store, onHand: Qty, updatedAt: Updated}}
      - name: MARKETPLACE
        kind: rest
        url: https://api.example.com/stock
        authHeader: Authorization
        authEnv: MARKETPLACE_TOKEN      # the secret is read from this variable, never logged
        recordsPath: $.items[*]
        nextCursorPath: $.next          # cursor following (or nextUrlPath)
        resumeFromCursor: false         # true: incremental feed, go on from the last cursor
        mapping: {fields: {sku: sku, location: store, onHand: available}}

:func:`load_channels` validates the whole file at start-up and raises
:class:`ChannelsConfigError` with one line per problem, each naming where it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from stream_app.connectors.csv_rows import unsupported
from stream_app.connectors.mapping import FieldMapping


class ChannelsConfigError(ValueError):
    """The channels file cannot be used; the message names the file and every problem."""


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    mapping: FieldMapping
    poll_interval_seconds: float = Field(30.0, gt=0, alias="pollIntervalSeconds")
    enabled: bool = True


class S3Channel(_Channel):
    kind: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    archive_prefix: str = Field("archive/", alias="archivePrefix")
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    envelope_records: int = Field(500, ge=1, le=5000, alias="envelopeRecords")
    max_rejections_kept: int = Field(100_000, ge=0, alias="maxRejectionsKept")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        problem = unsupported(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _archive_apart(self) -> S3Channel:
        # the listing skips the archive prefix: archived files (and reports) beside or under
        # the incoming prefix are never picked up again; incoming files inside the archive
        # prefix would never be picked up at all
        if not self.archive_prefix or self.prefix.startswith(self.archive_prefix):
            raise ValueError(
                f"prefix {self.prefix!r} is inside archivePrefix {self.archive_prefix!r}: "
                "no file would ever be picked up"
            )
        return self


class RestChannel(_Channel):
    kind: Literal["rest"]
    url: str = Field(pattern=r"^https?://")
    auth_header: str = Field("Authorization", alias="authHeader")
    auth_env: str | None = Field(None, alias="authEnv")
    records_path: str = Field("$[*]", alias="recordsPath")
    next_cursor_path: str | None = Field(None, alias="nextCursorPath")
    cursor_param: str = Field("cursor", alias="cursorParam")
    next_url_path: str | None = Field(None, alias="nextUrlPath")
    requests_per_minute: float = Field(120.0, gt=0, alias="requestsPerMinute")
    max_attempts: int = Field(5, ge=1, alias="maxAttempts")
    timeout_seconds: float = Field(10.0, gt=0, alias="timeoutSeconds")
    max_pages: int = Field(1000, ge=1, alias="maxPages")
    #: incremental feeds keep the last cursor between polls (the next poll walks on from it);
    #: snapshot feeds (the default) walk from the first page on every poll
    resume_from_cursor: bool = Field(False, alias="resumeFromCursor")

    def auth_value(self) -> SecretStr | None:
        """The secret header value from ``authEnv`` (None without one)."""
        if self.auth_env is None:
            return None
        return SecretStr(os.environ.get(self.auth_env, ""))


Channel = Annotated[S3Channel | RestChannel, Field(discriminator="kind")]


class ChannelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[Channel] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ChannelsFile:
        seen: set[str] = set()
        for channel in self.channels:
            if channel.name in seen:
                raise ValueError(f"channel name {channel.name!r} is used twice")
            seen.add(channel.name)
        return self


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("s3", "rest") and out.endswith("]"):
            continue  # the discriminator's branch name
        else:
            out += f".{part}" if out else str(part)
    return out or "(file)"


def parse_channels(data: Any, source: str = "channels file") -> ChannelsFile:
    try:
        parsed = ChannelsFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ChannelsConfigError(f"{source}: " + "; ".join(problems)) from None
    for channel in parsed.channels:
        if (
            isinstance(channel, RestChannel)
            and channel.auth_env
            and not os.environ.get(channel.auth_env)
        ):
            raise ChannelsConfigError(
                f"{source}: channel {channel.name!r}: environment variable "
                f"{channel.auth_env} (authEnv) is not set"
            )
    return parsed


def load_channels(path: str | Path) -> ChannelsFile:
    """Read and validate a channels file (``.json``, ``.yaml`` or ``.yml``)."""
    file = Path(path)
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise ChannelsConfigError(
            f"channels file {file}: cannot read it ({exc.strerror})"
        ) from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = orjson.loads(text)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ChannelsConfigError(
            f"channels file {file}: not valid {file.suffix[1:] or 'JSON'}: {first}"
        ) from None
    return parse_channels(data if data is not None else {}, f"channels file {file}")
