"""The fields that compute something, each a resolver on ``info.context`` (the
:class:`~.state.SimulatorState`): the root queries, ``createOrder`` and the nested
connections. Every other field is read from the parent's dict (graphql-core's default).

Connections page in key order (positions by retailer, SKU, location; orders and items by
id) with Relay arguments: ``first``/``last`` (1..5000, default 100), ``after``/``before``
(an edge's ``cursor``: base64url of the JSON key, e.g. ``["1","SKU-1","LOC-1"]``).
``hasNextPage`` is true when ``first`` left rows out, ``hasPreviousPage`` when ``after`` was
given (or ``last`` left rows out). A list filter given as ``null`` or ``[]`` does not filter.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from graphql import GraphQLError, GraphQLResolveInfo, default_field_resolver

from stream_app.fluent.simulator.common import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    iso,
    parse_iso,
)
from stream_app.fluent.simulator.state import InventoryRow, SimulatorState

Key = tuple[Any, ...]
Resolver = Callable[..., Any]

DATE_ERROR_CODE = "C0100E"
DUPLICATE_ORDER_CODE = "C0130E"
POSITION_WORKFLOW = "INVENTORY_POSITION::DEFAULT"
QUANTITY_WORKFLOW = "INVENTORY_QUANTITY::LAST_ON_HAND"
CATALOGUE_WORKFLOW = "INVENTORY_CATALOGUE::DEFAULT"


def _state(info: GraphQLResolveInfo) -> SimulatorState:
    state: SimulatorState = info.context
    return state


# --- cursors and pages ------------------------------------------------------------------------


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode("ascii")


def decode_cursor(cursor: Any, arg: str, kinds: tuple[type, ...]) -> Key:
    """The key of an edge's cursor; a GraphQL error unless it is a key of these kinds."""
    try:
        key = orjson.loads(base64.urlsafe_b64decode(str(cursor)))
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        key = None
    if (
        not isinstance(key, list)
        or len(key) != len(kinds)
        or not all(
            isinstance(v, k) and not isinstance(v, bool) for v, k in zip(key, kinds, strict=True)
        )
    ):
        raise GraphQLError(f"Invalid cursor for '{arg}'")
    return tuple(key)


def _page_size(args: Mapping[str, Any], arg: str) -> int | None:
    value = args.get(arg)
    if value is None:
        return None
    if not 0 < value <= MAX_PAGE_SIZE:
        raise GraphQLError(f"'{arg}' must be an integer between 1 and {MAX_PAGE_SIZE}")
    return int(value)


def paginate(
    rows: list[tuple[Key, Any]], args: Mapping[str, Any], kinds: tuple[type, ...]
) -> tuple[list[tuple[Key, Any]], bool, bool]:
    """The page of ``rows`` (sorted by key) the Relay arguments ask for, and whether pages
    exist before and after it."""
    first, last = _page_size(args, "first"), _page_size(args, "last")
    after = decode_cursor(args["after"], "after", kinds) if args.get("after") else None
    before = decode_cursor(args["before"], "before", kinds) if args.get("before") else None
    if after is not None:
        rows = [r for r in rows if r[0] > after]
    if before is not None:
        rows = [r for r in rows if r[0] < before]
    if first is None and last is None:
        first = DEFAULT_PAGE_SIZE
    has_previous, has_next = after is not None, before is not None
    if first is not None:
        has_next = len(rows) > first
        rows = rows[:first]
    if last is not None:
        has_previous = has_previous or len(rows) > last
        rows = rows[-last:]
    return rows, has_previous, has_next


def connection(
    page: Iterable[tuple[Key, Any]], has_previous: bool, has_next: bool
) -> dict[str, Any]:
    return {
        "edges": [{"cursor": encode_cursor(key), "node": node} for key, node in page],
        "pageInfo": {"hasPreviousPage": has_previous, "hasNextPage": has_next},
    }


def _wanted(values: Any) -> set[Any] | None:
    """A list filter as a set; None when it does not filter."""
    if not values:
        return None
    kept = {v for v in values if v is not None}
    return kept or None


def _in_range(ts: float, window: Any, arg: str) -> bool:
    """``from <= ts <= to`` for a ``DateRange`` (either end may be missing)."""
    if not window:
        return True
    for end in ("from", "to"):
        value = window.get(end)
        if value is None:
            continue
        if not isinstance(value, str):
            raise GraphQLError(
                f"'{arg}.{end}' must be an ISO 8601 DateTime", extensions={"code": DATE_ERROR_CODE}
            )
        try:
            bound = parse_iso(value)
        except ValueError:
            raise GraphQLError(
                f"'{arg}.{end}' is not an ISO 8601 DateTime: {value!r}",
                extensions={"code": DATE_ERROR_CODE},
            ) from None
        if (end == "from" and ts < bound) or (end == "to" and ts > bound):
            return False
    return True


# --- inventory --------------------------------------------------------------------------------


def position_node(row: InventoryRow) -> dict[str, Any]:
    return {
        "id": row.entity_id,
        "ref": f"{row.sku_ref}:{row.location_ref}:DEFAULT",
        "type": "DEFAULT",
        "status": "ACTIVE",
        "workflowRef": POSITION_WORKFLOW,
        "workflowVersion": 1,
        "createdOn": iso(row.created_at),
        "updatedOn": iso(row.updated_at),
        "attributes": [],
        "productRef": row.sku_ref,
        # LAST_ON_HAND is the only quantity the simulator holds, so onHand equals it.
        "onHand": row.qty,
        "locationRef": row.location_ref,
        "catalogue": {
            "id": row.retailer_id,
            "ref": f"DEFAULT:{row.retailer_id}",
            "type": "DEFAULT",
            "status": "ACTIVE",
            "name": "Default inventory catalogue",
            "workflowRef": CATALOGUE_WORKFLOW,
            "workflowVersion": 1,
        },
        "_row": row,
    }


def _position_filter(args: Mapping[str, Any]) -> Callable[[InventoryRow], bool]:
    """The filter arguments of ``inventoryPositions`` as one test of a row."""
    by_value: list[tuple[set[Any], Callable[[InventoryRow], Any]]] = []
    for arg, value_of in (
        ("ref", lambda r: f"{r.sku_ref}:{r.location_ref}:DEFAULT"),
        ("type", lambda r: "DEFAULT"),
        ("status", lambda r: "ACTIVE"),
        ("productRef", lambda r: r.sku_ref),
        ("locationRef", lambda r: r.location_ref),
        ("onHand", lambda r: r.qty),
        ("workflowRef", lambda r: POSITION_WORKFLOW),
        ("workflowVersion", lambda r: 1),
    ):
        wanted = _wanted(args.get(arg))
        if wanted is not None:
            by_value.append((wanted, value_of))
    catalogue = args.get("catalogue")
    retailer = str(catalogue["ref"]).rpartition(":")[2] if catalogue else None
    created, updated = args.get("createdOn"), args.get("updatedOn")

    def test(row: InventoryRow) -> bool:
        if retailer is not None and row.retailer_id != retailer:
            return False
        if not all(value_of(row) in wanted for wanted, value_of in by_value):
            return False
        return _in_range(row.created_at, created, "createdOn") and _in_range(
            row.updated_at, updated, "updatedOn"
        )

    return test


def inventory_positions(_root: Any, info: GraphQLResolveInfo, **args: Any) -> dict[str, Any]:
    test = _position_filter(args)
    rows = [(key, row) for key, row in sorted(_state(info).inventory.items()) if test(row)]
    page, has_previous, has_next = paginate(rows, args, (str, str, str))
    return connection(((key, position_node(row)) for key, row in page), has_previous, has_next)


def position_quantities(source: Any, _info: GraphQLResolveInfo, **args: Any) -> dict[str, Any]:
    row: InventoryRow = source["_row"]
    node = {
        "id": f"{row.entity_id}-LAST_ON_HAND",
        "ref": f"{row.sku_ref}:{row.location_ref}:LAST_ON_HAND",
        "type": "LAST_ON_HAND",
        "status": "ACTIVE",
        "workflowRef": QUANTITY_WORKFLOW,
        "workflowVersion": 1,
        "quantity": row.qty,
        "condition": None,
        "expectedOn": None,
        "storageAreaRef": None,
        "createdOn": iso(row.created_at),
        "updatedOn": iso(row.updated_at),
        "attributes": [],
        "_row": row,
    }
    types, statuses = _wanted(args.get("type")), _wanted(args.get("status"))
    rows = [
        ((n["ref"],), n)
        for n in (node,)
        if (types is None or n["type"] in types) and (statuses is None or n["status"] in statuses)
    ]
    return connection(*paginate(rows, args, (str,)))


def quantity_position(source: Any, _info: GraphQLResolveInfo) -> dict[str, Any]:
    return position_node(source["_row"])


# --- orders -----------------------------------------------------------------------------------


def _order_problem(order_input: Any) -> str | None:
    """What the schema lets through but Fluent still refuses: empty required values."""
    if not isinstance(order_input, Mapping):
        return "Variable 'input' of type CreateOrderInput is required"
    missing = [
        k for k in ("ref", "type", "retailer", "customer", "items") if not order_input.get(k)
    ]
    if missing:
        return f"CreateOrderInput: {', '.join(missing)} is required"
    for index, item in enumerate(order_input["items"]):
        if not isinstance(item, Mapping):
            return f"items[{index}] must be an object"
        gone = [k for k in ("ref", "productRef", "quantity") if item.get(k) in (None, "")]
        if gone:
            return f"items[{index}]: {', '.join(gone)} is required"
    return None


def create_order(_root: Any, info: GraphQLResolveInfo, **args: Any) -> dict[str, Any]:
    """Records the order (status CREATED); a ref that exists already is an error
    (``C0130E``) and nothing is recorded."""
    state = _state(info)
    order_input = args.get("input")
    problem = _order_problem(order_input)
    if problem:
        raise GraphQLError(problem)
    assert isinstance(order_input, Mapping)  # _order_problem checked it
    ref = str(order_input["ref"])
    if ref in state.orders:
        raise GraphQLError(
            f"Order with ref '{ref}' already exists", extensions={"code": DUPLICATE_ORDER_CODE}
        )
    now = state.clock()
    node: dict[str, Any] = {
        "id": state.next_id("order"),
        "ref": ref,
        "type": order_input["type"],
        "status": "CREATED",
        "workflowRef": "ORDER::" + str(order_input["type"]),
        "workflowVersion": 1,
        "createdOn": iso(now),
        "updatedOn": iso(now),
        "createdAt": now,
        "updatedAt": now,
        "attributes": list(order_input.get("attributes") or []),
        "retailer": {"id": order_input["retailer"]["id"], "ref": None},
        "customer": {"id": order_input["customer"]["id"], "ref": None},
        "totalPrice": order_input.get("totalPrice"),
        "totalTaxPrice": order_input.get("totalTaxPrice"),
        "fulfilmentChoice": None,
        "input": dict(order_input),
    }
    node["_items"] = [
        {
            **item,
            "id": state.next_id("orderItem"),
            "attributes": list(item.get("attributes") or []),
            "order": node,
        }
        for item in order_input["items"]
    ]
    choice = order_input.get("fulfilmentChoice")
    if choice:
        address = choice.get("deliveryAddress")
        node["fulfilmentChoice"] = {
            **choice,
            "id": state.next_id("fulfilmentChoice"),
            "deliveryAddress": {**address, "id": state.next_id("address")} if address else None,
        }
    state.orders[ref] = node
    return node


def _order_matches(order: Mapping[str, Any], args: Mapping[str, Any]) -> bool:
    for arg in ("ref", "type", "status"):
        wanted = _wanted(args.get(arg))
        if wanted is not None and order[arg] not in wanted:
            return False
    return _in_range(order["createdAt"], args.get("createdOn"), "createdOn") and _in_range(
        order["updatedAt"], args.get("updatedOn"), "updatedOn"
    )


def orders(_root: Any, info: GraphQLResolveInfo, **args: Any) -> dict[str, Any]:
    rows = sorted(
        ((int(o["id"]),), o) for o in _state(info).orders.values() if _order_matches(o, args)
    )
    return connection(*paginate(rows, args, (int,)))


def order(_root: Any, info: GraphQLResolveInfo, **args: Any) -> dict[str, Any] | None:
    """By ``id``, ``ref`` or both (both must match); null when there is no such order."""
    order_id, ref = args.get("id"), args.get("ref")
    if order_id is None and ref is None:
        raise GraphQLError("order needs 'id' or 'ref'")
    for candidate in _state(info).orders.values():
        if (order_id is None or candidate["id"] == order_id) and (
            ref is None or candidate["ref"] == ref
        ):
            return candidate
    return None


def order_by_id(_root: Any, info: GraphQLResolveInfo, **args: Any) -> dict[str, Any] | None:
    return order(_root, info, id=args["id"])


def order_items(source: Any, _info: GraphQLResolveInfo, **args: Any) -> dict[str, Any]:
    rows = [((int(item["id"]),), item) for item in source["_items"]]
    return connection(*paginate(rows, args, (int,)))


def order_fulfilments(_source: Any, _info: GraphQLResolveInfo, **args: Any) -> dict[str, Any]:
    """The simulator runs no order workflow, so an order never has fulfilments."""
    return connection(*paginate([], args, (int,)))


RESOLVERS: dict[tuple[str, str], Resolver] = {
    ("Query", "inventoryPositions"): inventory_positions,
    ("Query", "orders"): orders,
    ("Query", "order"): order,
    ("Query", "orderById"): order_by_id,
    ("Mutation", "createOrder"): create_order,
    ("InventoryPosition", "quantities"): position_quantities,
    ("InventoryQuantity", "position"): quantity_position,
    ("Order", "items"): order_items,
    ("Order", "fulfilments"): order_fulfilments,
}


def resolve_field(source: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
    """The executor's field resolver: a resolver of :data:`RESOLVERS`, else the field's
    value in the parent dict."""
    resolver = RESOLVERS.get((info.parent_type.name, info.field_name))
    if resolver is None:
        return default_field_resolver(source, info, **args)
    return resolver(source, info, **args)
