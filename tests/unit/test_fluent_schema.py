"""The simulator's GraphQL schema: the SDL parses and builds, has the types and arguments
of Fluent's schema the product uses, and the client's documents validate against it."""

from __future__ import annotations

from graphql import (
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    parse,
    print_type,
    validate,
)

from stream_app.fluent.documents import (
    CREATE_ORDER_MUTATION,
    create_orders_mutation,
    inventory_positions_query,
)
from stream_app.fluent.simulator import FLUENT_SDL, fluent_schema


def test_the_sdl_parses_and_builds_once() -> None:
    parse(FLUENT_SDL)
    schema = fluent_schema()
    assert isinstance(schema, GraphQLSchema)
    assert fluent_schema() is schema
    assert isinstance(build_schema(FLUENT_SDL), GraphQLSchema)
    assert schema.query_type is not None and schema.mutation_type is not None
    assert set(schema.query_type.fields) == {"inventoryPositions", "orders", "order", "orderById"}
    assert set(schema.mutation_type.fields) == {"createOrder"}


def test_inventory_positions_arguments_and_types_follow_fluent() -> None:
    schema = fluent_schema()
    assert schema.query_type is not None
    field = schema.query_type.fields["inventoryPositions"]
    args = {name: str(arg.type) for name, arg in field.args.items()}
    assert args == {
        "ref": "[String!]",
        "type": "[String!]",
        "status": "[String]",
        "productRef": "[String!]",
        "locationRef": "[String]",
        "onHand": "[Int]",
        "catalogue": "InventoryCatalogueKey",
        "createdOn": "DateRange",
        "updatedOn": "DateRange",
        "workflowRef": "[String!]",
        "workflowVersion": "[Int!]",
        "first": "Int",
        "last": "Int",
        "before": "String",
        "after": "String",
    }
    assert str(field.type) == "InventoryPositionConnection"
    page_info = schema.get_type("PageInfo")
    assert isinstance(page_info, GraphQLObjectType)
    assert set(page_info.fields) == {"hasPreviousPage", "hasNextPage"}  # no endCursor
    position = schema.get_type("InventoryPosition")
    assert isinstance(position, GraphQLObjectType)
    assert set(position.fields["quantities"].args) >= {"type", "status", "first", "after"}
    assert str(position.fields["id"].type) == "ID!" and str(position.fields["onHand"].type) == "Int"


def test_create_order_input_types_follow_fluent() -> None:
    schema = fluent_schema()
    order_input = schema.get_type("CreateOrderInput")
    assert isinstance(order_input, GraphQLInputObjectType)
    required = {n for n, f in order_input.fields.items() if isinstance(f.type, GraphQLNonNull)}
    assert required == {"ref", "type", "retailer", "customer", "items"}
    items = order_input.fields["items"].type
    assert isinstance(items, GraphQLNonNull) and isinstance(items.of_type, GraphQLList)
    assert "value: Json!" in print_type(schema.get_type("AttributeInput"))  # type: ignore[arg-type]
    date_range = schema.get_type("DateRange")
    assert isinstance(date_range, GraphQLInputObjectType)
    assert {n: str(f.type) for n, f in date_range.fields.items()} == {
        "from": "DateTime",
        "to": "DateTime",
    }


def test_the_clients_documents_are_valid_against_the_schema() -> None:
    schema = fluent_schema()
    documents = [CREATE_ORDER_MUTATION, create_orders_mutation(1), create_orders_mutation(50)]
    documents += [
        inventory_positions_query(products=p, locations=lo, catalogue=c)
        for p in (False, True)
        for lo in (False, True)
        for c in (False, True)
    ]
    for document in documents:
        assert validate(schema, parse(document)) == [], document


def test_a_mismatched_variable_type_does_not_validate() -> None:
    document = parse(
        "query($productRef: [String]) { inventoryPositions(productRef: $productRef)"
        " { edges { cursor } } }"
    )
    [error] = validate(fluent_schema(), document)
    assert "[String!]" in error.message
