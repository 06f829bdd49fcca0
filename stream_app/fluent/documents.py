"""The GraphQL documents the client sends, each valid against Fluent's schema
(``tests/unit/test_fluent_documents.py`` validates every one the client can build)."""

from __future__ import annotations

CREATE_ORDER_MUTATION = """
mutation createOrder($input: CreateOrderInput) {
  createOrder(input: $input) { id ref type status workflowRef workflowVersion createdOn }
}
""".strip()


ORDER_FIELDS = "id ref type status workflowRef workflowVersion createdOn"


def create_orders_mutation(count: int) -> str:
    """A mutation creating ``count`` orders: ``o<n>: createOrder(input: $i<n>)``."""
    params = ", ".join(f"$i{n}: CreateOrderInput" for n in range(count))
    fields = "\n".join(
        f"  o{n}: createOrder(input: $i{n}) {{ {ORDER_FIELDS} }}" for n in range(count)
    )
    return f"mutation createOrders({params}) {{\n{fields}\n}}"


def inventory_positions_query(*, products: bool, locations: bool, catalogue: bool) -> str:
    params = ["$first: Int", "$after: String"]
    args = ["first: $first", "after: $after"]
    if products:
        params.append("$productRef: [String!]")
        args.append("productRef: $productRef")
    if locations:
        params.append("$locationRef: [String]")
        args.append("locationRef: $locationRef")
    if catalogue:
        params.append("$catalogue: InventoryCatalogueKey")
        args.append("catalogue: $catalogue")
    return (
        f"query inventoryPositions({', '.join(params)}) {{\n"
        f"  inventoryPositions({', '.join(args)}) {{\n"
        "    edges { cursor node { id ref type status productRef locationRef onHand"
        " createdOn updatedOn } }\n"
        "    pageInfo { hasNextPage hasPreviousPage }\n"
        "  }\n"
        "}"
    )
