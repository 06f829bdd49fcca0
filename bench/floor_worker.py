"""The floor of the decision-latency benchmark: a worker that answers without deciding.

Same Faust app settings, consumer tuning, process tuning and intake grouping as a real
``stream-app worker`` (same topics, 8 partitions, same broker), but its only agent reads
each pre-order's ``orderId`` and publishes ``{"orderId", "success": true}`` to
``pre-order-results``: no validation, no book, no table, no reservation event (it consumes
the real worker's other source topics too, with agents that do nothing). What it
measures is what Faust, aiokafka, the embedded broker and the load generator cost on this
machine before any of the product's work — the latency no decision logic can go below.

Run by ``bench/preorders.py`` (environment as for the real worker):
``python -m bench.floor_worker``.
"""

from __future__ import annotations

import faust
import orjson

from stream_app.app import create_faust_app, raw_topic
from stream_app.broker import patches
from stream_app.broker.batching import take_ready
from stream_app.cli import bootstrap_topics, serve, worker_loop
from stream_app.settings import Settings
from stream_app.topics import TopicNames


def build(settings: Settings) -> faust.App:
    app = create_faust_app(settings)
    patches.install(app, settings)  # the worker's consumer tuning and patches
    names = TopicNames.from_settings(settings)

    def topic(name: str) -> faust.TopicT:
        return raw_topic(app, name, settings.partitions)

    pre_orders = topic(names.pre_orders)
    results = names.pre_order_results
    # the real worker's other source topics, consumed (and idle) here too: every fetch
    # lists the same partitions
    for name in (names.inventory_changes, names.reservation_commands, names.internal,
                 names.release_commands):

        async def idle(stream: faust.StreamT[bytes]) -> None:
            async for _ in stream.events():
                pass

        app.agent(topic(name), name=f"floor-idle-{name}")(idle)

    @app.agent(pre_orders, name="floor-echo")
    async def echo(stream: faust.StreamT[bytes]) -> None:
        async for events in take_ready(
            stream, settings.preorder_batch_max, settings.preorder_batch_within
        ):
            for event in events:
                order_id = str(orjson.loads(event.value)["orderId"])
                value = orjson.dumps({"orderId": order_id, "success": True})
                # not awaited, like the real intake: Faust flushes before it commits
                await app.producer.send(results, order_id.encode(), value, None, None, None)

    return app


def main() -> None:
    settings = Settings()
    loop = worker_loop(settings)  # the product's loop: the floor is what it stands on
    bootstrap_topics(settings, loop)
    raise SystemExit(serve(build(settings), settings, loop))


if __name__ == "__main__":
    main()
