"""Builds the Faust app from a :class:`Settings` object and nothing else.

``create_runtime(settings)`` makes the ``faust.App``, its topics and tables, then
registers agents, timers and web views from an explicit list of modules (no
autodiscovery, no side effects at import).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import faust

from stream_app.broker import patches
from stream_app.broker.delivery import table_deliver
from stream_app.domain.inventory import BufferPolicy
from stream_app.metrics import Metrics
from stream_app.settings import Settings
from stream_app.topics import TopicNames
from tables.keyed import KeyedTable, define_keyed_table

if TYPE_CHECKING:
    from agents.books import Books
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
#: ``enrich(sku, location, atp) -> fields`` added to ``GET /inventory/{sku}/{location}``
ViewEnricher = Callable[[str, str, int], dict[str, Any]]


@dataclass
class InternalHandlers:
    """The handler of each kind of ``<app>-internal`` message, set by the flow that owns it;
    :func:`agents.internal.dispatch_table` maps the kinds to them (one table, one place)."""

    inventory_apply: Handler | None = None  # agents.inventory
    sync_ack: Handler | None = None  # agents.sync
    preorder_items: Handler | None = None  # agents.preorders (the books)
    preorder_decisions: Handler | None = None  # agents.preorders (the order collector)
    book_command: Handler | None = None  # agents.preorders (cancel, commit, promote)


@dataclass
class InventoryHooks:
    """What other flows plug into the inventory apply (agents.inventory) and its view."""

    stagers: list[Stager] = field(default_factory=list)
    after_apply: list[AfterApply] = field(default_factory=list)
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
    each flow's services once its module has registered (``REGISTRY`` order: a module
    reads only what the modules before it set; :func:`need` says which is missing)."""

    settings: Settings
    app: faust.App
    names: TopicNames
    topics: dict[str, faust.TopicT]
    inventory: KeyedTable
    buffers: BufferPolicy
    metrics: Metrics
    internal_handlers: InternalHandlers = field(default_factory=InternalHandlers)
    inventory_hooks: InventoryHooks = field(default_factory=InventoryHooks)
    preorders: PreOrders | None = None  # agents.preorders
    sync: SyncService | None = None  # agents.sync
    release: Release | None = None  # agents.release
    result_waiters: ResultWaiters | None = None  # stream_app.web.preorder_views

    def topic(self, name: str) -> faust.TopicT:
        return self.topics[name]


def need(value: T | None, what: str) -> T:
    """``value``, registered by an earlier module; a clear error when it is not."""
    if value is None:
        raise RuntimeError(f"{what} is not registered yet: check the order of app.REGISTRY")
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


def create_runtime(settings: Settings) -> Runtime:
    app = create_faust_app(settings)
    patches.install(app, settings)  # before any topic or agent exists
    names = TopicNames.from_settings(settings)
    topics = {name: raw_topic(app, name, settings.partitions) for name in names.all()}
    inventory = define_keyed_table(
        app,
        "inventory",
        settings.partitions,
        "Latest record per channel and expected arrivals per SKU/location",
        table_deliver(app),
    )
    runtime = Runtime(
        settings=settings,
        app=app,
        names=names,
        topics=topics,
        inventory=inventory,
        buffers=BufferPolicy(settings.default_buffer, dict(settings.channel_buffers)),
        metrics=Metrics(),
    )
    for module in REGISTRY:
        importlib.import_module(module).register(runtime)
    return runtime


#: Modules that register agents, timers and views, in order (explicit, no autodiscovery).
REGISTRY = (
    "agents.internal",
    "agents.inventory",
    "agents.preorders",
    "agents.sync",
    "agents.release",
    "stream_app.web.views",
    "stream_app.web.preorder_views",
    "stream_app.web.sync_views",
    "stream_app.web.release_views",
)
