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


def test_a_partition_another_worker_wrote_meanwhile_is_overtaken() -> None:
    from stream_app.local_state import overtaken

    persisted = {("inventory", 0): 41, ("inventory", 1): 9, ("reservations", 2): None}
    ends = {("inventory", 0): 42, ("inventory", 1): 15, ("reservations", 2): 3,
            ("reservations", 3): 8}  # not held locally: nothing to discard
    assert overtaken(persisted, ends) == [("inventory", 1), ("reservations", 2)]
    assert overtaken({("x", 0): None}, {("x", 0): 0}) == []  # an empty changelog


def test_discard_overtaken_reads_faust_s_offsets_and_deletes_only_those(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rocksdict import Rdict

    from stream_app.local_state import FAUST_OFFSET_KEY, discard_overtaken, local_partitions

    tabledir = tmp_path / "tables"
    tabledir.mkdir()
    for name, offset in (("inventory-0.db", b"41"), ("inventory-1.db", b"9")):
        db = Rdict(str(tabledir / name))
        db[FAUST_OFFSET_KEY] = offset
        db.close()
    (tabledir / "inventory-backups").mkdir()  # Faust's, not a partition
    assert sorted(local_partitions(tabledir)) == [("inventory", 0), ("inventory", 1)]
    asked: list[list[tuple[str, int]]] = []

    def ends_of(keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        asked.append(keys)
        return {("inventory", 0): 42, ("inventory", 1): 12}

    assert discard_overtaken(tabledir, ends_of) == [("inventory", 1)]
    assert asked == [[("inventory", 0), ("inventory", 1)]]
    assert (tabledir / "inventory-0.db").exists() and not (tabledir / "inventory-1.db").exists()


def test_tables_never_ahead_of_their_changelog_are_kept_when_overtaken(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rocksdict import Rdict

    from stream_app.local_state import FAUST_OFFSET_KEY, discard_overtaken

    tabledir = tmp_path / "tables"
    tabledir.mkdir()
    for name in ("inventory-0.db", "reservations-0.db"):
        db = Rdict(str(tabledir / name))
        db[FAUST_OFFSET_KEY] = b"3"
        db.close()

    def ends_of(keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {key: 10 for key in keys}  # both written by another worker meanwhile

    assert discard_overtaken(tabledir, ends_of, {"inventory"}) == [("reservations", 0)]
    assert (tabledir / "inventory-0.db").exists() and not (tabledir / "reservations-0.db").exists()
