"""The start-up check of the Faust/aiokafka patches names what did not take effect."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from stream_app.app import create_faust_app
from stream_app.broker import patches
from stream_app.broker.fetch_scope import scoped_actions
from stream_app.broker.stores import check_store_access
from stream_app.settings import Settings


def app_with(settings: Settings, *, wrapped: bool, flagged: bool, tuned: bool) -> Any:
    app = create_faust_app(settings)
    patches.install(app, settings)

    def actions(assignment: Any) -> Any:
        return assignment

    fetcher = SimpleNamespace(
        _get_actions_per_node=scoped_actions(actions, set) if wrapped else actions,
        _prefetch_backoff=settings.consumer_prefetch_backoff_ms / 1000 if tuned else 0.1,
    )
    client = SimpleNamespace(
        _fetcher=fetcher, _fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms if tuned else 1500
    )
    thread = SimpleNamespace(_consumer=client, _stream_app_tansu_end_offsets=flagged)
    app._consumer = SimpleNamespace(_thread=thread)  # what the started worker holds
    return app


def test_every_patch_in_effect_reports_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, app_id="patch-ok")
    app = app_with(settings, wrapped=True, flagged=True, tuned=True)
    assert patches.problems(app, settings) == []


def test_each_missing_patch_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, app_id="patch-missing")
    app = app_with(settings, wrapped=False, flagged=False, tuned=False)
    found = " | ".join(patches.problems(app, settings))
    assert "Fetcher._get_actions_per_node is not wrapped" in found
    assert "highwaters() is not wrapped" in found
    assert "fetch_max_wait_ms was not lowered" in found
    assert "prefetch backoff was not set" in found
    assert "faust-streaming 0.15.3" in patches.pinned_versions()


def test_a_table_whose_store_lacks_per_partition_databases_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, app_id="patch-store")
    app = app_with(settings, wrapped=True, flagged=True, tuned=True)
    rocks = app.Table("rocks", default=None, key_type=bytes, value_type=bytes)
    assert check_store_access(rocks) is None
    assert patches.problems(app, settings) == []
    memory: Any = SimpleNamespace(name="mem", data=SimpleNamespace())  # a store without it
    app.tables["mem"] = memory
    found = patches.problems(app, settings)
    assert found == [check_store_access(memory)]
    assert "table mem" in found[0] and "RocksDB" in found[0]


def test_the_fetch_codec_not_in_effect_is_named(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from aiokafka.protocol.fetch import FetchRequest_v11

    from stream_app.broker import fetch_codec

    settings = Settings(data_dir=tmp_path, app_id="patch-codec")
    app = app_with(settings, wrapped=True, flagged=True, tuned=True)
    assert fetch_codec.installed()
    monkeypatch.setattr(FetchRequest_v11, "encode", fetch_codec.ORIGINAL_ENCODE)
    assert patches.problems(app, settings) == [
        "fetch codec: aiokafka's FetchRequest_v11/FetchResponse_v11 are not ours"
    ]
    off = Settings(data_dir=tmp_path, app_id="patch-codec", consumer_fast_fetch_codec=False)
    assert patches.problems(app, off) == []
