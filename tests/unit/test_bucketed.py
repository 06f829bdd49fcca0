"""tables.bucketed: one write per touched bucket; a replay writes its buckets again."""

from __future__ import annotations

from typing import Any

from tables.bucketed import BucketedTable


class Table(dict[str, Any]):
    """The part of a Faust table the bucketed view uses, counting writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes.append(key)
        super().__setitem__(key, value)


def set_to(value: int) -> Any:
    def change(key: str, old: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
        return {"v": value}, old != {"v": value}

    return change


def test_a_change_writes_each_touched_bucket_once() -> None:
    table = Table()
    view = BucketedTable(table, partitions=2, buckets=2)  # type: ignore[arg-type]
    keys = [f"SKU-{i}|L" for i in range(20)]
    assert sorted(view.update(keys, set_to(1))) == sorted(keys)
    assert len(table.writes) == len(set(table.writes)) == len({view.bucket_of(k) for k in keys})
    assert all(view.get(k) == {"v": 1} for k in keys)


def test_unchanged_buckets_are_written_only_when_asked() -> None:
    table = Table()
    view = BucketedTable(table, partitions=2, buckets=2)  # type: ignore[arg-type]
    view.update(["A|L", "B|L"], set_to(1))
    table.writes.clear()
    assert view.update(["A|L"], set_to(1)) == []
    assert table.writes == []
    assert view.update(["A|L"], set_to(1), rewrite=True) == []
    assert table.writes == [view.bucket_of("A|L")]
    assert view.get("A|L") == {"v": 1}
