"""The simulator's GraphQL over real HTTP as Fluent answers it (parsed, validated against
the schema, limited, only the fields asked for), the job results endpoint and the Event
API."""

from __future__ import annotations

from typing import Any

import pytest

from stream_app.fluent.documents import create_orders_mutation, inventory_positions_query
from stream_app.fluent.simulator import (
    COMPLEXITY_ERROR_CODE,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    MAX_QUERY_DEPTH,
    UNAUTHORIZED_MESSAGE,
)
from tests.fixtures.fluent import RunningSimulator

PASSWORD_GRANT = {
    "grant_type": "password",
    "username": DEFAULT_USERNAME,
    "password": DEFAULT_PASSWORD,
    "client_id": DEFAULT_CLIENT_ID,
    "client_secret": DEFAULT_CLIENT_SECRET,
    "scope": "api",
}


class Fluent:
    """Raw HTTP calls with a bearer token."""

    def __init__(self, sim: RunningSimulator, token: str) -> None:
        self.sim = sim
        self.token = token

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        async with self.sim.session.request(
            method, self.sim.url + path, json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        status, answer = await self.call("POST", "/graphql", body)
        assert status == 200, answer
        assert isinstance(answer, dict)
        return answer

    async def load(self, *rows: tuple[str, str, int]) -> str:
        """Inventory through a job and one batch, applied at once; returns the job id."""
        self.sim.state.config.batch_polls = 0
        _, job = await self.call("POST", "/api/v4.1/job", {"name": "load", "retailerId": "1"})
        entities = [
            {"retailerId": "1", "skuRef": sku, "locationRef": loc, "qty": qty}
            for sku, loc, qty in rows
        ]
        body = {"action": "UPSERT", "entityType": "INVENTORY", "entities": entities}
        status, _ = await self.call("POST", f"/api/v4.1/job/{job['id']}/batch", body)
        assert status == 200
        job_id: str = job["id"]
        return job_id


@pytest.fixture
async def fluent(fluent_sim: RunningSimulator) -> Fluent:
    async with fluent_sim.session.post(fluent_sim.url + "/oauth/token", data=PASSWORD_GRANT) as r:
        token = (await r.json())["access_token"]
    return Fluent(fluent_sim, token)


def order_input(ref: str) -> dict[str, Any]:
    return {
        "ref": ref,
        "type": "HD",
        "retailer": {"id": "1"},
        "customer": {"id": "7"},
        "items": [{"ref": f"{ref}-1", "productRef": "SKU-1", "quantity": 1}],
    }


def only_errors(body: dict[str, Any]) -> list[str]:
    """The messages of a request-level error (no ``data``), each with its locations."""
    assert "data" not in body, body
    assert body["errors"], body
    for error in body["errors"]:
        assert set(error) >= {"message", "locations"}, error
    return [e["message"] for e in body["errors"]]


# --- what comes back --------------------------------------------------------------------------


async def test_only_the_selected_fields_come_back(fluent: Fluent) -> None:
    await fluent.load(("SKU-1", "LOC-1", 4))
    body = await fluent.gql("{ inventoryPositions { edges { node { ref onHand } } } }")
    assert body == {
        "data": {
            "inventoryPositions": {"edges": [{"node": {"ref": "SKU-1:LOC-1:DEFAULT", "onHand": 4}}]}
        }
    }
    body = await fluent.gql(
        "{ inventoryPositions { pageInfo { hasNextPage } edges { node { quantities"
        " { edges { node { type quantity } } } } } } }"
    )
    connection = body["data"]["inventoryPositions"]
    assert connection["pageInfo"] == {"hasNextPage": False}
    [edge] = connection["edges"]
    assert edge == {
        "node": {"quantities": {"edges": [{"node": {"type": "LAST_ON_HAND", "quantity": 4}}]}}
    }


async def test_inline_literal_arguments_and_variables_give_the_same_page(fluent: Fluent) -> None:
    await fluent.load(("SKU-1", "LOC-1", 1), ("SKU-2", "LOC-1", 2), ("SKU-2", "LOC-2", 3))
    inline = await fluent.gql(
        '{ inventoryPositions(first: 1, productRef: ["SKU-2"], locationRef: ["LOC-2", null],'
        ' catalogue: {ref: "DEFAULT:1"}) { edges { node { ref } } pageInfo { hasNextPage } } }'
    )
    query = inventory_positions_query(products=True, locations=True, catalogue=True)
    variables = {
        "first": 1,
        "after": None,
        "productRef": ["SKU-2"],
        "locationRef": ["LOC-2", None],
        "catalogue": {"ref": "DEFAULT:1"},
    }
    with_variables = await fluent.gql(query, variables)
    assert inline["data"]["inventoryPositions"]["edges"] == [
        {"node": {"ref": "SKU-2:LOC-2:DEFAULT"}}
    ]
    assert with_variables["data"]["inventoryPositions"]["edges"][0]["node"]["ref"] == (
        "SKU-2:LOC-2:DEFAULT"
    )
    assert inline["data"]["inventoryPositions"]["pageInfo"] == {"hasNextPage": False}
    other = await fluent.gql(
        '{ inventoryPositions(catalogue: {ref: "DEFAULT:2"}) { edges { cursor } } }'
    )
    assert other["data"]["inventoryPositions"]["edges"] == []


async def test_aliases_name_each_field_of_the_answer(fluent: Fluent) -> None:
    await fluent.load(("SKU-1", "LOC-1", 1), ("SKU-2", "LOC-1", 2))
    body = await fluent.gql(
        '{ one: inventoryPositions(productRef: ["SKU-1"]) { edges { node { sku: productRef qty: onHand } } }'
        ' two: inventoryPositions(productRef: ["SKU-2"]) { edges { node { sku: productRef } } } }'
    )
    assert body["data"] == {
        "one": {"edges": [{"node": {"sku": "SKU-1", "qty": 1}}]},
        "two": {"edges": [{"node": {"sku": "SKU-2"}}]},
    }


async def test_a_field_error_is_null_with_its_path(fluent: Fluent) -> None:
    body = await fluent.gql('{ inventoryPositions(after: "not-a-cursor") { edges { cursor } } }')
    assert body["data"] == {"inventoryPositions": None}
    [error] = body["errors"]
    assert error["path"] == ["inventoryPositions"] and "cursor" in error["message"]
    body = await fluent.gql("{ inventoryPositions(first: 5001) { edges { cursor } } }")
    assert "between 1 and 5000" in body["errors"][0]["message"]


# --- mutations --------------------------------------------------------------------------------


async def test_several_create_orders_in_one_document_run_in_order(fluent: Fluent) -> None:
    query = create_orders_mutation(3)  # the client's own document: o0..o2 with $i0..$i2
    variables = {"i0": order_input("PO-1"), "i1": order_input("PO-2"), "i2": order_input("PO-1")}
    body = await fluent.gql(query, variables)
    assert body["data"]["o0"]["ref"] == "PO-1" and body["data"]["o0"]["status"] == "CREATED"
    assert body["data"]["o1"]["ref"] == "PO-2" and body["data"]["o2"] is None
    [duplicate] = body["errors"]
    assert duplicate["path"] == ["o2"] and "already exists" in duplicate["message"]
    assert duplicate["extensions"] == {"code": "C0130E"}
    assert [o["ref"] for o in await fluent.sim.get("/_sim/orders")] == ["PO-1", "PO-2"]

    inline = await fluent.gql(
        'mutation { a: createOrder(input: {ref: "PO-3", type: "CC", retailer: {id: 1},'
        ' customer: {id: "7"}, items: [{ref: "PO-3-1", productRef: "SKU-9", quantity: 2,'
        ' attributes: [{name: "gift", type: "JSON", value: {wrap: true}}]}]}) { ref'
        " items { edges { node { productRef quantity attributes { value } } } } } }"
    )
    assert inline == {
        "data": {
            "a": {
                "ref": "PO-3",
                "items": {
                    "edges": [
                        {
                            "node": {
                                "productRef": "SKU-9",
                                "quantity": 2,
                                "attributes": [{"value": {"wrap": True}}],
                            }
                        }
                    ]
                },
            }
        }
    }
    found = await fluent.gql(
        '{ order(ref: "PO-3") { id type retailer { id } } orderById(id: "1") { ref } }'
    )
    assert found["data"]["order"]["type"] == "CC" and found["data"]["order"]["retailer"] == {
        "id": "1"
    }
    assert found["data"]["orderById"] == {"ref": "PO-1"}


# --- validation and limits --------------------------------------------------------------------


async def test_unknown_fields_are_validation_errors_and_nothing_runs(fluent: Fluent) -> None:
    body = await fluent.gql("{ inventoryPositions { edges { node { ref colour } } } }")
    [message] = only_errors(body)
    assert "colour" in message and "InventoryPosition" in message
    body = await fluent.gql("{ inventoryPositions { pageInfo { endCursor } } }")
    assert "endCursor" in only_errors(body)[0]  # Fluent's PageInfo has no endCursor
    body = await fluent.gql(
        "mutation($i: CreateOrderInput) { createOrder(input: $i) { id nope } }",
        {"i": order_input("PO-1")},
    )
    assert "nope" in only_errors(body)[0]
    assert await fluent.sim.get("/_sim/orders") == []
    assert "Syntax Error" in only_errors(await fluent.gql("{ inventoryPositions( }"))[0]


async def test_a_variable_declared_with_another_type_than_its_argument_is_refused(
    fluent: Fluent,
) -> None:
    await fluent.load(("SKU-1", "LOC-1", 1))
    query = (
        "query($productRef: [String], $first: Int) { inventoryPositions(productRef: $productRef,"
        " first: $first) { edges { node { ref } } } }"
    )
    [message] = only_errors(await fluent.gql(query, {"productRef": ["SKU-1"], "first": 5}))
    assert "$productRef" in message and "[String]" in message and "[String!]" in message
    right = query.replace("[String]", "[String!]")
    body = await fluent.gql(right, {"productRef": ["SKU-1"], "first": 5})
    assert body["data"]["inventoryPositions"]["edges"] == [{"node": {"ref": "SKU-1:LOC-1:DEFAULT"}}]
    [message] = only_errors(await fluent.gql(right, {"productRef": ["SKU-1"], "first": "five"}))
    assert "$first" in message


LEAF_QUANTITY = "quantities(first: 1) { edges { node { id } } }"  # 4 levels


def nested(hops: int, leaf: str = "id") -> str:
    """``inventoryPositions { edges { node`` (depth 3), then ``hops`` times quantity ->
    position (4 levels each), then ``leaf`` inside the last position."""
    inner = leaf
    for _ in range(hops):
        inner = f"quantities(first: 1) {{ edges {{ node {{ position {{ {inner} }} }} }} }}"
    return f"{{ inventoryPositions(first: 1) {{ edges {{ node {{ {inner} }} }} }} }}"


async def test_queries_deeper_than_the_limit_are_refused(fluent: Fluent) -> None:
    await fluent.load(("SKU-1", "LOC-1", 1))
    assert MAX_QUERY_DEPTH == 15
    within = await fluent.gql(nested(2, LEAF_QUANTITY))  # depth 3 + 8 + 4 = 15
    position = within["data"]["inventoryPositions"]["edges"][0]["node"]
    for _ in range(2):
        position = position["quantities"]["edges"][0]["node"]["position"]
    assert position["quantities"]["edges"] == [{"node": {"id": "1-LAST_ON_HAND"}}]
    [message] = only_errors(await fluent.gql(nested(3)))  # depth 3 + 12 + 1 = 16
    assert message == "maximum query depth exceeded 16 > 15"


async def test_queries_over_the_complexity_limit_are_refused_with_c0001e(fluent: Fluent) -> None:
    await fluent.load(("SKU-1", "LOC-1", 1))

    def query(page: int) -> str:
        per_position = " ".join(
            f"q{n}: quantities(first: {page}) {{ edges {{ cursor }} }}" for n in range(3)
        )
        return (
            f"{{ inventoryPositions(first: {page}) {{ edges {{ node {{ {per_position} }} }} }} }}"
        )

    assert "data" in await fluent.gql(query(3000))  # 1 + 3 x 3000 = 9001 queries
    body = await fluent.gql(query(5000))  # 1 + 3 x 5000 = 15001 > 11111
    only_errors(body)
    assert body["errors"][0]["extensions"] == {"code": COMPLEXITY_ERROR_CODE}
    variables = await fluent.gql(
        "query($n: Int) { inventoryPositions(first: $n) { edges { node {"
        " a: quantities { edges { cursor } } b: quantities { edges { cursor } }"
        " c: quantities { edges { cursor } } } } } }",
        {"n": 4000},
    )
    assert variables["errors"][0]["extensions"] == {"code": COMPLEXITY_ERROR_CODE}


async def test_graphql_needs_a_token_and_a_query(fluent: Fluent) -> None:
    status, body = await fluent.call("POST", "/graphql", {"query": "{ __typename }"}, token="x")
    assert (status, body) == (401, {"errors": [{"code": "401", "message": UNAUTHORIZED_MESSAGE}]})
    status, body = await fluent.call("POST", "/graphql", {"variables": {}})
    assert status == 400 and body["errors"][0]["message"] == "'query' is required"


# --- job results ------------------------------------------------------------------------------


async def test_job_results_list_every_batch_with_its_status_and_results(fluent: Fluent) -> None:
    _, job = await fluent.call("POST", "/api/v4.1/job", {"name": "j", "retailerId": "1"})
    path = f"/api/v4.1/job/{job['id']}"
    entities = [{"retailerId": "1", "skuRef": "SKU-1", "locationRef": "LOC-1", "qty": 3}]
    body = {"action": "UPSERT", "entityType": "INVENTORY", "entities": entities}
    _, first = await fluent.call("POST", f"{path}/batch", body)
    _, second = await fluent.call("POST", f"{path}/batch", body)
    for _ in range(2):  # RUNNING, then COMPLETE
        await fluent.call("GET", f"{path}/batch/{first['id']}")

    status, results = await fluent.call("GET", f"{path}/results")
    assert status == 200
    assert results["jobId"] == job["id"] and results["status"] == "OPEN"
    assert results["total"] == 2
    done, pending = results["results"]
    assert (done["batchId"], done["status"]) == (first["id"], "COMPLETE")
    [record] = done["results"]
    assert record["entityRef"] == "SKU-1:LOC-1" and record["responseCode"] == "200"
    assert (pending["batchId"], pending["status"], pending["results"]) == (
        second["id"],
        "PENDING",
        [],
    )
    _, again = await fluent.call("GET", f"{path}/results")
    assert again["results"][1]["status"] == "PENDING"  # reading results is not a status poll

    assert (await fluent.call("GET", "/api/v4.1/job/999/results"))[0] == 404
    assert (await fluent.call("GET", f"{path}/results", token="made-up"))[0] == 401


# --- events -----------------------------------------------------------------------------------

EVENT = {
    "name": "UpdateInventoryQty",
    "entityType": "INVENTORY_CATALOGUE",
    "entityRef": "DEFAULT:1",
    "rootEntityType": "INVENTORY_CATALOGUE",
    "rootEntityRef": "DEFAULT:1",
    "retailerId": "1",
    "attributes": {"items": [{"skuRef": "SKU-1", "locationRef": "LOC-1", "reserveQty": "-5"}]},
}


async def test_events_async_and_sync_are_recorded(fluent: Fluent) -> None:
    status, accepted = await fluent.call("POST", "/api/v4.1/event/async", EVENT)
    assert status == 200 and accepted["id"] and accepted["eventStatus"] == "PENDING"
    status, done = await fluent.call(
        "POST", "/api/v4.1/event/sync", {**EVENT, "entityId": 143, "retailerId": 1}
    )
    assert status == 200
    assert done["eventStatus"] == "COMPLETE" and done["entityId"] == "143" and done["eventId"]
    events = await fluent.sim.get("/_sim/events")
    assert [(e["mode"], e["eventId"], e["eventStatus"]) for e in events] == [
        ("async", accepted["id"], "PENDING"),
        ("sync", done["eventId"], "COMPLETE"),
    ]
    assert events[0]["event"] == EVENT and events[1]["event"]["entityId"] == 143
    assert await fluent.sim.request("POST", "/_sim/reset") == {"reset": True}
    assert await fluent.sim.get("/_sim/events") == []


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_bad_events_are_400_listing_every_problem(fluent: Fluent, mode: str) -> None:
    path = f"/api/v4.1/event/{mode}"
    bad = {**EVENT, "entityRef": "", "attributes": "x", "entitySubtype": 5}
    del bad["name"], bad["retailerId"]
    status, body = await fluent.call("POST", path, bad)
    assert status == 400
    assert [e["message"] for e in body["errors"]] == [
        "'name' is required",
        "'retailerId' is required",
        "'entityRef' is required",
        "'entitySubtype' must be a string",
        "'attributes' must be an object or a list",
    ]
    assert all(e["code"] == "400" for e in body["errors"])
    status, body = await fluent.call("POST", path, ["not", "an", "object"])
    assert status == 400 and body["errors"][0]["message"].startswith("the request body")
    assert (await fluent.call("POST", path, EVENT, token="made-up"))[0] == 401
    assert await fluent.sim.get("/_sim/events") == []
