"""The ``stream-app`` console script.

``run``        embedded broker (if no broker is configured) + Fluent simulator (if no Fluent
               URL is configured) + one worker with its web view, all stopped on Ctrl-C/SIGTERM.
``worker``     one worker against the configured cluster (same app id = same group).
``fluent-sim`` the Fluent simulator alone.
``topics``     create every topic the app uses (idempotent) and exit.
``settings``   print the effective settings, secrets masked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from stream_app.credentials import open_doors
from stream_app.embedded import (
    EmbeddedBroker,
    EmbeddedBrokerError,
    die_with_parent,
    port_open,
    stop_process,
)
from stream_app.local_state import (
    claim_local_state,
    discard_local_state,
    discard_overtaken,
    marker_path,
    release_local_state,
)
from stream_app.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    import faust

log = logging.getLogger("stream_app")


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"stream-app: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def all_topic_names(settings: Settings) -> list[str]:
    from stream_app.layout import layout_topic
    from stream_app.topics import TopicNames

    return [*TopicNames.from_settings(settings).all(), layout_topic(settings.app_id)]


def bootstrap_topics(settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
    from stream_app.bootstrap import TopicMismatchError, ensure_topics

    try:
        created = loop.run_until_complete(
            ensure_topics(
                settings.bootstrap_servers,
                all_topic_names(settings),
                settings.partitions,
                settings.replication_factor,
            )
        )
    except TopicMismatchError as exc:
        _fail(str(exc))
    except Exception as exc:  # broker unreachable and friends
        _fail(f"cannot reach the Kafka broker at {settings.bootstrap_servers}: {exc}")
    if created:
        log.info("created %d topics", len(created))
    check_storage_layout(settings, loop)


def check_storage_layout(settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
    """Refuse to start on state written with another layout (stream_app.layout)."""
    from stream_app.layout import LayoutMismatchError, check_layout, current_layout, layout_topic
    from tables.reservations import CHUNK_SIZE

    wanted = current_layout(CHUNK_SIZE)
    try:
        verdict = loop.run_until_complete(asyncio.wait_for(
            check_layout(settings.bootstrap_servers, layout_topic(settings.app_id), wanted), 60
        ))
    except LayoutMismatchError as exc:
        _fail(f"refusing to start: {exc}")
    except Exception as exc:  # broker unreachable and friends
        _fail(f"cannot check the storage layout on {settings.bootstrap_servers}: {exc!r}")
    log.info("storage layout %s: %s", verdict, wanted)


def pin_library_log_levels(level: str) -> None:
    """Give aiokafka its own level: Faust's terminal spinner may lower the root logger to
    DEBUG, and formatting every aiokafka debug line costs ~10% of a worker's CPU."""
    floor = max(logging.getLevelName(level.upper()), logging.INFO)
    for name in ("aiokafka", "kafka"):
        logging.getLogger(name).setLevel(floor if isinstance(floor, int) else logging.INFO)


def tune_worker_process(settings: Settings) -> None:
    """Process-wide settings of a worker: library log levels and GC thresholds (fewer,
    larger young-generation collections: CPython's default of 700 runs the collector
    every few hundred allocations, pausing the loop that decides)."""
    pin_library_log_levels(settings.log_level)
    gc.set_threshold(*settings.gc_thresholds)


def worker_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind ``settings.event_loop`` names, set as the current one.

    The policy is set process-wide so that the loops the worker's threads make for
    themselves (the aiokafka consumer's thread of Faust) are of the same kind."""
    if settings.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def run_worker(settings: Settings, fresh_broker: bool = False) -> int:
    """Run one Faust worker until SIGTERM/SIGINT; returns its exit code. ``fresh_broker``:
    the broker was just started and holds nothing (the embedded one keeps no data), so
    local tables of an earlier run would describe changelogs that no longer exist."""
    from stream_app.wiring import create_runtime

    loop = worker_loop(settings)
    bootstrap_topics(settings, loop)
    runtime = create_runtime(settings)
    for warning in open_doors(settings):
        log.warning("%s", warning)
    _say(f"web view:  http://{runtime.app.conf.web_host}:{settings.web_port}/")
    if settings.event_loop != "asyncio":
        _say(f"event loop: {settings.event_loop}")
    return serve(runtime.app, settings, loop, fresh_broker)


def changelog_ends(
    settings: Settings, loop: asyncio.AbstractEventLoop, keys: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """End offsets of the changelogs of ``(table, partition)`` pairs (Faust names them
    ``<app id>-<table>-changelog``)."""
    from faust.types import TP

    from stream_app.broker.tansu_offsets import true_end_offsets
    from stream_app.topics import changelog_topics

    tables = sorted({table for table, _ in keys})
    topic_of = dict(zip(changelog_topics(settings, tables), tables, strict=True))
    name_of = {table: topic for topic, table in topic_of.items()}
    tps = [TP(name_of[table], p) for table, p in keys]
    ends = loop.run_until_complete(true_end_offsets(settings.bootstrap_servers, tps))
    return {(topic_of[tp.topic], tp.partition): end for tp, end in ends.items()}


def serve(
    app: faust.App,
    settings: Settings,
    loop: asyncio.AbstractEventLoop,
    fresh_broker: bool = False,
) -> int:
    """Run ``app`` as a Faust worker on ``loop`` until SIGTERM/SIGINT; its exit code."""
    import faust

    from tables.keyed import changelog_first_tables

    worker = faust.Worker(app, loop=loop, loglevel=settings.log_level.lower(), quiet=True)
    # Faust's terminal spinner lowers the root logger to DEBUG at WARNING levels (and costs
    # CPU formatting every debug line); start-up progress is in the log anyway.
    worker.spinner = None
    tune_worker_process(settings)
    tabledir = Path(app.conf.tabledir)
    if fresh_broker and discard_local_state(tabledir):
        _say("the embedded broker keeps nothing across restarts: local tables of the last "
             "run discarded (use STREAM_APP_KAFKA_BROKER for data that survives)")
    was_unclean = marker_path(tabledir).exists()
    if claim_local_state(tabledir, discard=settings.discard_local_state_after_crash):
        _say("unclean stop before: local tables discarded, rebuilding from the changelogs")
    elif was_unclean:
        rebuilt = discard_overtaken(
            tabledir, lambda keys: changelog_ends(settings, loop, keys), changelog_first_tables(app)
        )
        if rebuilt:
            _say(f"unclean stop before: {len(rebuilt)} table partitions another worker wrote "
                 "meanwhile are rebuilt from their changelogs")
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    if code == 0:
        release_local_state(tabledir)
    return code


@contextlib.contextmanager
def fluent_simulator_process(settings: Settings) -> Iterator[None]:
    host, port = settings.fluent_sim_host, settings.fluent_sim_port
    if port_open(host, port):
        _fail(f"port {host}:{port} is in use; set STREAM_APP_FLUENT_SIM_PORT to a free port")
    proc = subprocess.Popen(  # noqa: S603 - our own module, no shell
        [sys.executable, "-m", "stream_app.cli", "fluent-sim"],
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
    )
    try:
        deadline = time.monotonic() + 15
        while not port_open(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                _fail("the Fluent simulator did not start")
            time.sleep(0.05)
        _say(f"fluent simulator: http://{host}:{port}/  (inspect: /_sim/inventory)")
        yield
    finally:
        stop_process(proc, 10)


def cmd_run(settings: Settings) -> int:
    with contextlib.ExitStack() as stack:
        if settings.embedded:
            broker = EmbeddedBroker(settings.embedded_kafka_host, settings.embedded_kafka_port)
            try:
                broker.start()
            except EmbeddedBrokerError as exc:
                _fail(str(exc))
            stack.callback(broker.stop)
            _say(f"embedded broker: {broker.bootstrap}")
        else:
            _say(f"kafka broker: {settings.bootstrap_servers}")
        if not settings.fluent_base_url:
            stack.enter_context(fluent_simulator_process(settings))
        else:
            _say(f"fluent: {settings.fluent_base_url}")
        return run_worker(settings, fresh_broker=settings.embedded)
    return 0  # pragma: no cover


def cmd_fluent_sim(settings: Settings) -> int:
    from stream_app.fluent.simulator import serve_simulator

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_simulator(
            settings.fluent_sim_host,
            settings.fluent_sim_port,
            stop,
            username=settings.fluent_username,
            password=settings.fluent_password.get_secret_value(),
            client_id=settings.fluent_client_id,
            client_secret=settings.fluent_client_secret.get_secret_value(),
        )

    asyncio.run(main())
    return 0


def cmd_topics(settings: Settings) -> int:
    loop = asyncio.new_event_loop()
    try:
        bootstrap_topics(settings, loop)
    finally:
        loop.close()
    _say("topics ready: " + ", ".join(all_topic_names(settings)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-app", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "broker + Fluent simulator + one worker, on one machine"),
        ("worker", "one worker against the configured cluster"),
        ("fluent-sim", "the Fluent simulator alone"),
        ("topics", "create every topic the app uses and exit"),
        ("settings", "print the effective settings with secrets masked"),
    ):
        sub.add_parser(name, help=text)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        _fail(str(exc))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "run":
        return cmd_run(settings)
    if args.command == "worker":
        return run_worker(settings)
    if args.command == "fluent-sim":
        return cmd_fluent_sim(settings)
    if args.command == "topics":
        return cmd_topics(settings)
    _say(json.dumps(settings.masked(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
