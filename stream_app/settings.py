"""All configuration: the only module that reads the environment.

Every field maps to an environment variable ``STREAM_APP_<FIELD>`` (a ``.env`` file in the
working directory is read too). Secrets are ``SecretStr`` and never printed: use
:meth:`Settings.masked` for anything that is shown to people.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from stream_app.connectors.csv_rows import MAX_RECORD_BYTES

ENV_PREFIX = "STREAM_APP_"


class SettingsError(Exception):
    """Invalid configuration: one message naming the offending variable(s)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- broker and worker -------------------------------------------------------------
    kafka_broker: str = Field("", description="Kafka bootstrap URL; empty starts the embedded broker")
    app_id: str = Field("stream-app", min_length=1, description="Faust app id = consumer group")
    embedded_kafka_port: int = Field(9092, ge=1, le=65535)
    embedded_kafka_host: str = "127.0.0.1"
    web_host: str = Field("127.0.0.1", description="address the web view binds to")
    web_port: int = Field(6066, ge=1, le=65535)
    data_dir: Path = Path("./data")
    partitions: int = Field(8, ge=1, le=1024, description="partition count of every topic")
    replication_factor: int = Field(1, ge=1)
    broker_session_timeout: float = Field(10.0, gt=0)
    broker_heartbeat_interval: float = Field(1.0, gt=0)
    broker_rebalance_timeout: float = Field(3.0, gt=0)
    log_level: str = "INFO"
    correct_end_offsets: bool = Field(
        True,
        description="check the end offsets a broker reports against a fetch at recovery "
        "(the embedded broker reports too little after batched writes; an honest broker's "
        "values are never lowered): one short fetch per changelog partition at recovery. "
        "Always on for the embedded broker",
    )
    table_standby_replicas: int = Field(
        1, ge=0,
        description="standby copies of each table partition on other workers (with two or "
        "more workers a takeover reads only the changelog's tail); no effect with one worker",
    )

    # --- inventory ---------------------------------------------------------------------
    default_buffer: int = Field(0, ge=0, description="buffer for channels without one")
    channel_buffers: dict[str, int] = Field(
        default_factory=dict, description='per-channel default buffers, JSON: {"WMS": 5}'
    )
    oversell_protection: bool = True
    max_event_bytes: int = Field(1_000_000, ge=1024)
    max_quantity: int = Field(
        2**31 - 1, ge=1, le=2**31 - 1,
        description="the largest onHand/reserved/buffer/quantity a record may carry (Fluent's "
        "GraphQL Int is 32-bit); larger is a validation error (dead letter)",
    )
    max_clock_skew_seconds: float = Field(
        300.0, gt=0,
        description="an updatedAt more than this ahead of its message's timestamp is a "
        "validation error (dead letter): one far-future clock must not pin a channel",
    )
    dead_letter_max_bytes: int = Field(
        65536, ge=1024, le=900_000,
        description="a dead letter keeps at most this many bytes of its original (the size "
        "and a SHA-256 of the whole original go in its headers): a dead letter always fits",
    )
    stall_seconds: float = Field(
        60.0, gt=0,
        description="a stream waiting this long for the broker to take its outputs makes "
        "/health not ready, naming the topic and partition (stream_app_stalled_seconds)",
    )
    ingest_batch_max: int = Field(2000, ge=1, description="events grouped per repartition step")
    ingest_batch_within: float = Field(0.2, gt=0, description="seconds to wait filling a group")
    ingest_batch_max_bytes: int = Field(
        4 << 20,
        ge=65_536,
        description="bytes of message values a group takes at most (about; a fetch is taken "
        "whole): with envelopes of 500 records, 2,000 events were a million records",
    )
    ingest_linger_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="after a group's first record the ingest takes more for this long (a "
        "trickle of single records then becomes one apply per partition per linger, not one "
        "per record; under load groups fill at once)",
    )
    apply_chunk_records: int = Field(1000, ge=1, le=20000, description="records per internal message")
    loop_slice_ms: float = Field(
        1.5,
        gt=0,
        le=1000,
        description="long work (the ingest's takes and parse, applying an internal "
        "message, a table flush's local write, the sync's walk and triage) holds the event "
        "loop about this long per step: a web request waits for one step of each busy task "
        "(GET /inventory p99 under load)",
    )

    @property
    def loop_slice_seconds(self) -> float:
        """``loop_slice_ms`` in seconds (what stream_app.pacing.Slicer takes)."""
        return self.loop_slice_ms / 1000

    web_first_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="web requests first: long work waits (up to this long) while a request "
        "that arrived waits for its handler to start; 0 = off",
    )

    # --- topics (names are a contract; override only to namespace them) -----------------
    topic_inventory_changes: str = "inventory-changes"
    topic_pre_orders: str = "pre-orders"
    topic_reservation_commands: str = "reservation-commands"
    topic_reservation_events: str = "reservation-events"
    topic_pre_order_results: str = "pre-order-results"

    # --- Fluent ------------------------------------------------------------------------
    fluent_base_url: str = Field("", description="Fluent root URL; empty starts the simulator")
    fluent_sim_port: int = Field(8787, ge=1, le=65535)
    fluent_sim_host: str = "127.0.0.1"
    fluent_username: str = "sim-user"
    fluent_password: SecretStr = SecretStr("sim-password")
    fluent_client_id: str = "sim-client"
    fluent_client_secret: SecretStr = SecretStr("sim-secret")
    retailer_id: str = "1"
    flush_interval_seconds: float = Field(30.0, gt=0)
    flush_max_records: int = Field(
        50_000, ge=1,
        description="keys one flush considers at most; the next flush starts at once for the rest",
    )
    batch_size: int = Field(500, ge=1, le=5000)
    resync_cron: str = "0 1 * * *"
    reconcile_cron: str = Field(
        "30 4 * * *",
        description="when the leader compares Fluent's inventory positions with what Fluent "
        "last accepted and marks drifted keys dirty (UTC); empty = never (POST /sync/reconcile)",
    )
    reconcile_page_size: int = Field(500, ge=1, le=5000, description="positions per GraphQL page")
    fluent_max_attempts: int = Field(5, ge=1)
    fluent_backoff_base: float = Field(0.5, gt=0)
    fluent_backoff_max: float = Field(30.0, gt=0)
    fluent_auth_backoff_seconds: float = Field(60.0, gt=0, description="pause after bad credentials")
    fluent_timeout_seconds: float = Field(10.0, gt=0)
    fluent_poll_interval: float = Field(0.2, gt=0)
    fluent_poll_timeout: float = Field(120.0, gt=0)
    sellable_policy: str = Field("atp_minus_reservations", pattern="^(atp_minus_reservations|atp)$")

    # --- pre-orders --------------------------------------------------------------------
    overbooking_rate: float = Field(1.05, ge=1.0, le=10.0)
    overbooking_rates: dict[str, float] = Field(
        default_factory=dict,
        description='per category or SKU glob pattern, JSON: {"CONSOLE-*": 1.0}',
    )
    min_days_ahead: int = Field(7, ge=0)
    max_days_ahead: int = Field(180, ge=1)
    expiry_days: int = Field(7, ge=0)
    waitlist_enabled: bool = True
    max_queue_depth: int = Field(10000, ge=1)
    priority_preemption: bool = True
    commit_required: bool = True
    expected_supply_factor: float = Field(1.0, ge=0.0, le=1.0)
    tier_scores: dict[str, int] = Field(
        default_factory=lambda: {"PLATINUM": 150, "VIP": 100, "STANDARD": 50}
    )
    unknown_tier_policy: str = Field("reject", pattern="^(reject|standard)$")
    max_per_customer: int | None = Field(None, ge=1)
    pre_order_wait_seconds: float = Field(
        2.0, ge=0,
        description="POST /pre-orders answers within this (publishing and the decision), "
        "else 202 with the status URL",
    )
    pre_order_shed_after_seconds: float = Field(
        1.0, ge=0,
        description="when decisions on this worker run this far behind their pre-orders (the "
        "lag of the last ~10 decisions, or the oldest single-item request waiting for its "
        "decision), POST /pre-orders answers 202 with the status URL as soon as the broker "
        "has the order instead of waiting in the queue (above capacity); 0 = always wait up "
        "to pre_order_wait_seconds",
    )
    pre_order_max_in_flight: int = Field(
        2000, ge=1,
        description="POST /pre-orders being answered at once on one worker; beyond it 429 "
        "with Retry-After instead of queueing",
    )
    max_request_bytes: int = Field(256_000, ge=1024)
    preorder_batch_max: int = Field(1000, ge=1, description="pre-orders grouped per intake step")
    internal_group_max: int = Field(
        64, ge=1,
        description="internal-topic messages handled as one group: consecutive inventory "
        "applies share one changelog flush (1: a flush per message)",
    )
    internal_group_records: int = Field(
        2000, ge=1,
        description="records of consecutive inventory applies flushed together at most (the "
        "flush's local write is cut into slices of loop_slice_ms)",
    )
    preorder_batch_within: float = Field(
        0.02,
        ge=0,
        description="seconds between the starts of two intake groups: a pre-order arriving "
        "after a quiet spell is taken at once; under load the groups start at most this "
        "often and grow with the backlog (0: a group as soon as one pre-order is ready: lowest "
        "latency when light, about half the burst throughput here)",
    )
    discard_local_state_after_crash: bool = Field(
        False,
        description="after an unclean stop (kill -9, OOM) delete local table state and "
        "rebuild every table from its changelog (stream_app.local_state). Off by default: "
        "a rebuild reads every changelog from the start, and replays rewrite what they find "
        "already applied, so the changelog catches up either way (docs/reliability.md)",
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="the worker's event loop: asyncio (the standard library's) or uvloop "
        "(libuv). Measured here (docs/benchmarks.md): uvloop answers web requests sooner "
        "under load (POST /pre-orders p99 at 200/s ~30 % lower) but loaded and applied a "
        "100k-key catalogue 10-30 % slower; a worker that mostly serves requests may prefer it",
    )
    gc_thresholds: tuple[int, int, int] = Field(
        (50_000, 20, 1_000),
        description="Python garbage-collector thresholds of a worker (gc.set_threshold); "
        "[700, 10, 10] = CPython's defaults. Measured: p99 at 500 pre-orders/s 92-132 ms "
        "instead of 107-351 ms",
    )
    producer_linger_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="how long the worker's producer waits to fill a batch (throughput vs "
        "per-hop latency)",
    )
    consumer_prefetch_backoff_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="embedded broker: how long fetched-but-unconsumed records of one "
        "partition may hold back fetches of the others (aiokafka's fixed default is "
        "100 ms); 0 = keep",
    )
    consumer_fetch_consumed_only: bool = Field(
        True,
        description="the worker's consumer leaves partitions Faust has paused (active "
        "table changelogs after recovery) out of its fetch requests; Faust itself only "
        "pauses them logically, so every fetch listed them",
    )
    consumer_fast_fetch_codec: bool = Field(
        True,
        description="encode the consumer's fetch requests and decode their responses in a "
        "few struct calls instead of aiokafka's field-by-field protocol code (the same "
        "bytes and structs; ~100 fetches a second on the embedded broker)",
    )
    consumer_fetch_max_wait_ms: int = Field(
        10,
        ge=0,
        le=1500,
        description="cap on the worker consumer's fetch wait on the embedded broker (Faust "
        "hard-codes 1500 ms and Tansu holds every fetch that long: one hop = up to 1.5 s); "
        "0 = keep",
    )

    # --- release and export ------------------------------------------------------------
    release_cron: str = "0 2 * * *"
    release_timezone: str = "UTC"
    release_committed_first: bool = False
    expiry_check_cron: str = "0 * * * *"
    confirmed_hold_grace_hours: float = Field(
        24.0,
        gt=0,
        description="a CONFIRMED reservation's units stay held (sellable and future ATP, the "
        "next release) until a channel reports stock for its SKU/location newer than the "
        "confirmation, or this long after it (checked by the hourly expiry pass; counted in "
        "stream_app_confirmed_holds_released_total{reason=\"grace\"})",
    )
    admin_api_key: SecretStr = Field(
        SecretStr(""),
        description="X-API-Key of the admin endpoints (release, export, flush, reconcile); "
        "empty refuses them",
    )
    service_api_key: SecretStr = Field(
        SecretStr(""),
        description="X-API-Key a storefront sends to place pre-orders, cancel and commit "
        "reservations and see customer data (the admin key works too); empty refuses those "
        "calls",
    )
    reservation_id_secret: SecretStr = Field(
        SecretStr(""),
        description="key of the HMAC in reservation ids, so an id cannot be derived from "
        "an order id; the same on every worker and never changed once orders exist (ids "
        "already issued keep working, a replayed order must get its id again). Empty: "
        "unkeyed ids, with a warning at start-up",
    )
    cluster_secret: SecretStr = Field(
        SecretStr(""),
        description="token of requests forwarded between workers (a client-set forwarding "
        "header without it is ignored); empty: derived from the other secrets and the app id",
    )
    forward_timeout_seconds: float = Field(
        2.5, gt=0, le=30,
        description="how long a worker waits for the worker it forwards a request to; "
        "then 503 with Retry-After",
    )
    max_order_quantity: int = Field(
        10_000, ge=1, le=2**31 - 1,
        description="the largest quantity of one pre-order item (and of GET /atp)",
    )
    max_text_length: int = Field(
        200, ge=16, le=10_000,
        description="the longest id, e-mail, tier, product name or category a pre-order may hold",
    )
    max_json_depth: int = Field(
        16, ge=4, le=512, description="the deepest nesting a request body may have"
    )
    release_window_days: int = Field(
        14, ge=0, le=3660,
        description="POST /admin/release takes a date at most this many days from today "
        "(either side)",
    )
    export_cron: str = "0 3 * * *"
    retention_days: int = Field(
        30, ge=1,
        description="finished reservations (CONFIRMED and settled, CANCELLED, EXPIRED, "
        "REJECTED) and order results older than this are pruned after the nightly export "
        "wrote them (with exports off: by age alone)",
    )
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_bucket: str = ""
    s3_prefix: str = "stream-app/"
    aws_access_key_id: SecretStr = SecretStr("")
    aws_secret_access_key: SecretStr = SecretStr("")

    # --- channel connectors ------------------------------------------------------------
    channels_file: str = Field(
        "",
        description="JSON or YAML file of channel connectors (S3 CSV drops, REST pollers; "
        "stream_app.connectors.config); empty = none. Checked at start-up",
    )
    channel_fence_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="a channel's poller waits this long, before each poll, for the checkpoints "
        "already on the broker to be applied (a fence through its partition); then it retries",
    )
    csv_max_record_bytes: int = Field(
        MAX_RECORD_BYTES,
        ge=1024,
        le=64 << 20,
        description="bytes one CSV record of an S3 channel may take: a longer one (a stray "
        "quote makes the rest of a file one record) is one rejected row, cut at the first "
        "newline after this many bytes, and the file is read on from there",
    )
    channel_parse_processes: int = Field(
        1,
        ge=0,
        le=16,
        description="processes that parse and map the rows of S3 CSV files beside the worker "
        "(its event loop then only publishes the envelopes); 0 = parse in the worker's loop",
    )
    release_catch_up: bool = Field(
        True, description="at start-up the leader releases a scheduled night that was missed"
    )
    release_order_concurrency: int = Field(
        8, ge=1, le=512, description="Fluent createOrder requests in flight per release run"
    )
    release_orders_per_request: int = Field(
        50,
        ge=1,
        le=200,
        description="createOrder mutations per GraphQL request (aliased fields; 1 = one "
        "order per request). Bounded by Fluent's 2 MB body and query complexity limits",
    )
    release_fail_fast_after: int = Field(
        20, ge=1, description="consecutive Fluent outages after which a release stops calling"
        " Fluent for this run (the rest become RELEASE_FAILED, retried by the next run)",
    )

    @field_validator("gc_thresholds")
    @classmethod
    def _check_gc_thresholds(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(n < 0 for n in value):
            raise ValueError("thresholds must not be negative")
        return value

    @field_validator("release_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (an IANA name like Europe/Paris)") from None
        return value

    @field_validator("release_cron", "expiry_check_cron", "export_cron", "resync_cron", "reconcile_cron")
    @classmethod
    def _check_cron(cls, value: str, info: ValidationInfo) -> str:
        from croniter import CroniterBadCronError, CroniterBadDateError, croniter

        if info.field_name == "reconcile_cron" and not value.strip():
            return ""
        text = value.strip()
        fields = text.split()
        macro = text.startswith("@") and len(fields) == 1
        if not (macro or len(fields) == 5) or not croniter.is_valid(text):
            raise ValueError(f"{value!r} is not a crontab expression like '0 2 * * *' "
                             "(5 fields: minute hour day month weekday)")
        try:  # valid fields that never fire (Feb 31) would crash the timer when it starts
            croniter(text, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
        except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError):
            raise ValueError(f"{value!r} never fires (no such date)") from None
        return text

    @field_validator("channels_file")
    @classmethod
    def _check_channels(cls, value: str) -> str:
        if value.strip():
            from stream_app.connectors.config import load_channels

            load_channels(value.strip())  # ChannelsConfigError (a ValueError): one clear line
        return value.strip()

    @field_validator("kafka_broker", "fluent_base_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _check_ranges(self) -> Settings:
        if self.min_days_ahead >= self.max_days_ahead:
            raise ValueError("min_days_ahead must be below max_days_ahead")
        for tier, score in self.tier_scores.items():
            if not tier or score < 0:
                raise ValueError("tier_scores: every tier needs a name and a score >= 0")
        return self

    # --- derived -------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        return not self.kafka_broker

    @property
    def broker_url(self) -> str:
        """The bootstrap URL workers connect to (``kafka://host:port``)."""
        if self.kafka_broker:
            url = self.kafka_broker
            return url if "://" in url else f"kafka://{url}"
        return f"kafka://{self.embedded_kafka_host}:{self.embedded_kafka_port}"

    @property
    def bootstrap_servers(self) -> str:
        """``host:port[,host:port]`` for plain aiokafka clients."""
        url = self.broker_url
        return ",".join(part.split("://", 1)[-1] for part in url.split(","))

    @property
    def fluent_url(self) -> str:
        return self.fluent_base_url or f"http://{self.fluent_sim_host}:{self.fluent_sim_port}"

    def dlq(self, topic: str) -> str:
        return f"{topic}-dlq"

    def masked(self) -> dict[str, Any]:
        """A settings dump for people: every secret masked."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings`; an invalid value raises :class:`SettingsError` naming it."""
    try:
        return Settings(**overrides)
    except PydanticSettingsError as exc:  # a JSON setting that is not JSON: no traceback
        raise SettingsError(f"invalid setting: {_name_env_vars(str(exc))}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            name = str(loc[0]) if loc else ""
            var = f"{ENV_PREFIX}{name.upper()}" if name else "configuration"
            problems.append(f"{var}: {err.get('msg', 'invalid value')}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None


def _name_env_vars(message: str) -> str:
    """pydantic-settings names the field (``field "tier_scores"``): name the variable."""
    import re

    return re.sub(
        r'field "([a-z0-9_]+)"',
        lambda m: f"{ENV_PREFIX}{m.group(1).upper()} (expected JSON)",
        message,
    )
