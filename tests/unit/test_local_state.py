"""stream_app.local_state: local tables survive a clean stop, not an unclean one."""

from __future__ import annotations

from pathlib import Path

from stream_app.local_state import claim_local_state, marker_path, release_local_state


def tables(tmp_path: Path) -> Path:
    tabledir = tmp_path / "app-data" / "tables"
    (tabledir / "reservations-0.db").mkdir(parents=True)
    (tabledir / "reservations-0.db" / "CURRENT").write_text("x")
    return tabledir


def test_a_clean_stop_keeps_local_state(tmp_path: Path) -> None:
    tabledir = tables(tmp_path)
    assert claim_local_state(tabledir, discard=True) is False
    assert marker_path(tabledir).exists()
    release_local_state(tabledir)
    assert not marker_path(tabledir).exists()
    assert claim_local_state(tabledir, discard=True) is False
    assert (tabledir / "reservations-0.db" / "CURRENT").exists()


def test_after_an_unclean_stop_local_state_is_discarded(tmp_path: Path) -> None:
    tabledir = tables(tmp_path)
    claim_local_state(tabledir, discard=True)  # this worker is then killed: no release
    assert claim_local_state(tabledir, discard=True) is True
    assert not tabledir.exists()
    assert marker_path(tabledir).exists()  # the new worker is marked as running


def test_by_default_an_unclean_stop_keeps_local_state(tmp_path: Path) -> None:
    tabledir = tables(tmp_path)
    claim_local_state(tabledir, discard=False)
    assert claim_local_state(tabledir, discard=False) is False
    assert (tabledir / "reservations-0.db" / "CURRENT").exists()


def test_a_first_start_on_an_empty_directory(tmp_path: Path) -> None:
    tabledir = tmp_path / "fresh" / "tables"
    assert claim_local_state(tabledir, discard=True) is False
    assert marker_path(tabledir).exists()
