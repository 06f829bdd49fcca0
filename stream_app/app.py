"""The typed runtime every agent, timer and view shares, and the Faust app's configuration.

:class:`Runtime` names what the flows share (settings, topics, the inventory table, each
flow's services) as typed fields; :mod:`stream_app.wiring` builds it, in one function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import faust

from stream_app.credentials import Credentials
from stream_app.domain.inventory import BufferPolicy
from stream_app.metrics import Metrics
from stream_app.settings import Settings
from stream_app.topics import TopicNames
from tables.keyed import KeyedTable

if TYPE_CHECKING:
    from agents.books import Books
    from agents.channels import ChannelsService
    from agents.inventory import GroupedApply
    from agents.reconcile import Reconciler
    from agents.release_service import ReleaseService
    from agents.result_waiters import ResultWaiters
    from agents.sync import SyncService
    from stream_app.domain.preorders import Policy
    from tables.releases import ReleaseRuns
    from tables.reservations import OrderResults, ReservationStore

T = TypeVar("T")

#: a handler of one internal-topic message kind (agents.internal)
Handler = Callable[[faust.EventT], Awaitable[None]]
#: ``stage(keys, states, partition) -> table``: writes staged with an inventory apply's
#: (``states``: each key's state after the message), flushed together with them
Stager = Callable[[list[str], dict[str, Any], int], KeyedTable]
#: ``hook(event, keys, changed)`` after an inventory apply is on the changelog
AfterApply = Callable[[faust.EventT, list[str], list[str]], Awaitable[None]]
#: ``reads(partition, keys)``: whether an after-apply hook reads the state of these keys
#: (then a message touching them is flushed on its own: its hooks see its state alone)
ReadsSupply = Callable[[int, list[str]], bool]
#: ``enrich(sku, location, atp) -> fields`` added to ``GET /inventory/{sku}/{location}``
ViewEnricher = Callable[[str, str, int], dict[str, Any]]


@dataclass
class InternalHandlers:
    """The handler of each kind of ``<app>-internal`` message, set by the flow that owns it;
    :func:`agents.internal.dispatch_table` maps the kinds to them (one table, one place)."""

    inventory_apply: Handler | None = None  # agents.inventory
    #: the same kind as runs sharing one flush (agents.inventory.GroupedApply)
    inventory_grouped: GroupedApply | None = None
    sync_ack: Handler | None = None  # agents.sync
    preorder_items: Handler | None = None  # agents.preorders (the books)
    preorder_decisions: Handler | None = None  # agents.preorders (the order collector)
    book_command: Handler | None = None  # agents.preorders (cancel, commit, promote)
    channel_progress: Handler | None = None  # agents.channels (checkpoints, processed files)
    reconcile: Handler | None = None  # agents.reconcile (Fluent's positions vs accepted)


@dataclass
class InventoryHooks:
    """What other flows plug into the inventory apply (agents.inventory) and its view."""

    stagers: list[Stager] = field(default_factory=list)
    after_apply: list[AfterApply] = field(default_factory=list)
    reads_supply: list[ReadsSupply] = field(default_factory=list)
    view_enrichers: list[ViewEnricher] = field(default_factory=list)


@dataclass
class PreOrders:
    """The pre-order flow's state (agents.preorders), used by sync, release and views."""

    store: ReservationStore
    orders: OrderResults
    policy: Policy
    books: Books


@dataclass
class Release:
    """The release flow (agents.release), used by its views."""

    service: ReleaseService
    runs: ReleaseRuns


@dataclass
class Runtime:
    """What agents, timers and views share: settings, topics and tables of one app, and
    each flow's services (built together by :func:`stream_app.wiring.build_services`
    before any agent or view registers; :func:`need` says which is missing)."""

    settings: Settings
    app: faust.App
    names: TopicNames
    topics: dict[str, faust.TopicT]
    inventory: KeyedTable
    buffers: BufferPolicy
    metrics: Metrics
    internal_handlers: InternalHandlers = field(default_factory=InternalHandlers)
    inventory_hooks: InventoryHooks = field(default_factory=InventoryHooks)
    preorders: PreOrders | None = None  # the books (agents.books), their tables
    sync: SyncService | None = None  # agents.sync
    release: Release | None = None  # agents.release_service, the release_runs table
    result_waiters: ResultWaiters | None = None  # agents.result_waiters
    channels: ChannelsService | None = None  # agents.channels, the channel_state table
    reconciler: Reconciler | None = None  # agents.reconcile
    credentials: Credentials = field(init=False)  # from the settings

    def __post_init__(self) -> None:
        self.credentials = Credentials.from_settings(self.settings)

    def topic(self, name: str) -> faust.TopicT:
        return self.topics[name]


def need(value: T | None, what: str) -> T:
    """``value``, built by :func:`stream_app.wiring.build_services`; a clear error when
    it is not (a register called without it, in a test)."""
    if value is None:
        raise RuntimeError(f"{what} is not built yet: stream_app.wiring.build_services does")
    return value


def _canonical_host(settings: Settings) -> str:
    return "127.0.0.1" if settings.web_host in ("0.0.0.0", "", "::") else settings.web_host


def create_faust_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        store="rocksdb://",
        datadir=str(settings.data_dir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=_canonical_host(settings),
        canonical_url=f"http://{_canonical_host(settings)}:{settings.web_port}",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        table_standby_replicas=settings.table_standby_replicas,
        producer_linger=settings.producer_linger_ms / 1000,
        producer_max_batch_size=262144,
        # a revoke (and a stop) waits until every event being processed is acknowledged:
        # no table write for a partition after another worker starts recovering it; the
        # long-running release yields between groups (agents.release)
        stream_wait_empty=True,
    )
    return app


def raw_topic(app: faust.App, name: str, partitions: int) -> faust.TopicT:
    """A topic of raw bytes: every agent decodes (and dead-letters) values itself."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
