"""The composition root: :func:`create_runtime` builds one app from a :class:`Settings`.

In one place, in this order:

1. the ``faust.App`` (:func:`stream_app.app.create_faust_app`) and the private-API patches;
2. its topics (raw bytes: every agent decodes and dead-letters itself);
3. every table (inventory, fluent_accepted, reservations, order_results, release_runs,
   channel_state);
4. every flow's services (:func:`build_services`): the pre-order books, the sync service,
   the release service, the results waiters, the channel connectors, each closed at the
   worker's stop;
5. the agents, timers and views of each module in :data:`REGISTRY`, which only read the
   services (:func:`stream_app.app.need` says what is missing if one is called early).

No autodiscovery and no side effects at import: ``create_runtime`` twice gives two apps.
"""

from __future__ import annotations

from collections.abc import Callable

import agents.channels
import agents.internal
import agents.inventory
import agents.preorders
import agents.reconcile
import agents.release
import agents.sync
import stream_app.web.channel_views
import stream_app.web.console_views
import stream_app.web.openapi
import stream_app.web.preorder_views
import stream_app.web.release_views
import stream_app.web.seed_views
import stream_app.web.sync_views
import stream_app.web.views
from agents.books import Books
from agents.channels import ChannelsService
from agents.reconcile import Reconciler
from agents.release_service import ReleaseService
from agents.result_waiters import ResultWaiters
from agents.sync import SyncService
from stream_app.app import PreOrders, Release, Runtime, create_faust_app, raw_topic
from stream_app.broker import patches
from stream_app.broker.delivery import table_deliver
from stream_app.broker.lifecycle import at_shutdown
from stream_app.domain.inventory import BufferPolicy
from stream_app.domain.preorders import Policy
from stream_app.metrics import Metrics
from stream_app.settings import Settings
from stream_app.topics import TopicNames
from tables.keyed import define_keyed_table
from tables.releases import define_release_table
from tables.reservations import define_reservation_tables

#: What registers agents, timers and views, in order (the internal agent first: the
#: other flows set its handlers; the views last: they read what the flows built).
REGISTRY: tuple[Callable[[Runtime], None], ...] = (
    agents.internal.register,
    agents.inventory.register,
    agents.preorders.register,
    agents.sync.register,
    agents.reconcile.register,
    agents.release.register,
    agents.channels.register,
    stream_app.web.views.register,
    stream_app.web.preorder_views.register,
    stream_app.web.seed_views.register,
    stream_app.web.sync_views.register,
    stream_app.web.release_views.register,
    stream_app.web.channel_views.register,
    stream_app.web.console_views.register,
    stream_app.web.openapi.register,
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
        settings.loop_slice_seconds,
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
    build_services(runtime)
    for register in REGISTRY:
        register(runtime)
    return runtime


def build_services(runtime: Runtime) -> None:
    """The flows' tables and services (named fields of ``runtime``), each stateful client
    closed at Faust's ``on_before_shutdown`` (before the tasks using it are cancelled)."""
    app, settings = runtime.app, runtime.settings
    store, orders = define_reservation_tables(app, settings.partitions)
    policy = Policy.from_settings(settings)
    books = Books(runtime, store, policy)
    runtime.preorders = PreOrders(store=store, orders=orders, policy=policy, books=books)

    accepted = define_keyed_table(
        app, "fluent_accepted", settings.partitions,
        "Last quantity Fluent accepted per SKU/location, sync failures, dirty markers",
        table_deliver(app),
        settings.loop_slice_seconds,
    )
    runtime.sync = SyncService(runtime, accepted)
    at_shutdown(app, runtime.sync.close)
    runtime.reconciler = Reconciler(runtime, runtime.sync)
    at_shutdown(app, runtime.reconciler.close)

    runs = define_release_table(app, settings.partitions)
    release = ReleaseService(runtime, store, runs, policy, orders=orders)
    runtime.release = Release(service=release, runs=runs)
    at_shutdown(app, release.close)  # its Fluent client, also when a task is cut short

    waiters = ResultWaiters()
    books.on_result = waiters.resolve_result  # single-item results, in-process
    books.on_lag = waiters.note_lag  # how far decisions run behind: POST /pre-orders sheds
    runtime.result_waiters = waiters
    at_shutdown(app, waiters.close)

    channel_state = define_keyed_table(
        app, "channel_state", settings.partitions,
        "Channel connectors: file checkpoints, processed files, REST cursors",
        table_deliver(app),
        settings.loop_slice_seconds,
    )
    runtime.channels = ChannelsService.from_settings(runtime, channel_state)
    at_shutdown(app, runtime.channels.close)
