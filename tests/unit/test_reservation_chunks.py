"""How reservations are grouped into stored chunks (tables.reservations)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.domain.model import Reservation, Status
from tables.reservations import CHUNK_SIZE, chunk_key, encode_chunk, owner_of_chunk

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def reservation(sku: str, location: str, sequence: int, ship: date = date(2027, 1, 5)) -> Reservation:
    return Reservation(
        reservation_id=f"R-{sku}-{sequence}", order_id=f"O{sequence}", item_index=0,
        customer_id="c", customer_email="", sku=sku, location=location, ship_date=ship,
        quantity=1, tier="VIP", tier_score=100, sequence=sequence, status=Status.RESERVED,
        expires_at=NOW, created_at=NOW, updated_at=NOW,
    )


text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda t: "|" not in t
)


@given(sku=text, location=text, sequence=st.integers(1, 10**6))
def test_a_chunk_key_names_its_sku_and_location(sku: str, location: str, sequence: int) -> None:
    key = chunk_key(reservation(sku, location, sequence), CHUNK_SIZE)
    assert owner_of_chunk(key) == f"{sku}|{location}"


def test_consecutive_arrivals_share_a_chunk_and_queues_do_not() -> None:
    first = [chunk_key(reservation("S", "L", n), 16) for n in range(16, 32)]
    assert len(set(first)) == 1
    assert chunk_key(reservation("S", "L", 32), 16) != first[0]
    other_date = chunk_key(reservation("S", "L", 16, date(2027, 2, 1)), 16)
    assert other_date != first[0]
    assert owner_of_chunk("R-abc-0123456789abcdef") is None and owner_of_chunk("C-x") is None


def test_encoded_chunk_is_the_json_object_of_its_reservations() -> None:
    items = {f"R-{n}": orjson.dumps(reservation("S", "L", n).to_dict()) for n in range(3)}
    decoded = orjson.loads(encode_chunk(items))
    assert list(decoded) == list(items)
    assert decoded["R-1"]["sequence"] == 1
    assert orjson.loads(encode_chunk({})) == {}


def test_agents_share_one_book_object_once_recovery_ended_even_while_rebalancing() -> None:
    """Faust delivers events after recovery but before "worker ready" (still rebalancing):
    every agent must get the same books then; while changelogs are read (views only) they
    are not built at all: the view answers 503 (a build per request costs O(reservations))."""
    from types import SimpleNamespace

    from tables.reservations import Recovering, ReservationStore

    recovery = SimpleNamespace(in_recovery=False)
    app = SimpleNamespace(consumer=object(), rebalancing=True, rebalancing_count=3,
                          tables=SimpleNamespace(recovery=recovery))
    table = SimpleNamespace(data=SimpleNamespace(), items=dict)
    store = ReservationStore(app, table, partitions=4)  # type: ignore[arg-type]
    assert store.books(1) is store.books(1)
    recovery.in_recovery = True
    with pytest.raises(Recovering, match="partition 1 is being recovered") as raised:
        store.books(1)
    assert raised.value.code == 503
    recovery.in_recovery = False
    first = store.books(1)
    app.rebalancing_count = 4  # a new rebalance: the cache of the last one dies
    assert store.books(1) is not first
