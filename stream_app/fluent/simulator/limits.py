"""Query depth and complexity, checked after validation and before anything runs.

Complexity follows Fluent's rule that "total complexity equals the number of queries to be
executed" (docs: GraphQL Query Limits; max 11,111, error ``C0001E``): a root field, a
connection field, or a field returning an entity (an object type with an ``id``, other
than an edge's ``node``) costs 1 for each parent row it is fetched for. A connection's
rows are its ``first`` (or ``last``; 100 when neither is given), so
``inventoryPositions(first: 500) { edges { node { quantities { ... } } } }`` costs
1 + 500. Five nested connections of ``first: 10`` cost exactly 11,111.

Depth counts fields from the operation down (a root field is depth 1, fragments
expanded; introspection fields are left out, as they cost nothing). Fluent documents no
depth limit; :data:`MAX_QUERY_DEPTH` (15) is a usual graphql-java guard, deeper than any
document the product sends (4) or a sensible one over this schema needs. Fields that share a
response key are merged and a fragment counts once per selection set, as execution does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)

from stream_app.fluent.simulator.common import DEFAULT_PAGE_SIZE

MAX_QUERY_DEPTH = 15
MAX_QUERY_COMPLEXITY = 11_111
COMPLEXITY_ERROR_CODE = "C0001E"
DEPTH_ERROR_CODE = "MaxQueryDepthExceeded"

_META_FIELDS = frozenset({"__schema", "__type", "__typename"})


class _Exceeded(Exception):
    def __init__(self, error: GraphQLError) -> None:
        super().__init__(error.message)
        self.error = error


class _Walk:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        operation: OperationDefinitionNode,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.operation = operation
        self.complexity = 0
        self.depth = 0

    def collect(
        self, selection_sets: list[SelectionSetNode], parent: GraphQLObjectType
    ) -> dict[str, list[FieldNode]]:
        """Fields by response key, fragments expanded once (as execution collects them)."""
        fields: dict[str, list[FieldNode]] = {}
        seen: set[str] = set()
        # No interfaces or unions in this schema: a fragment's type is always ``parent``.
        pending = list(selection_sets)
        while pending:
            selection_set = pending.pop(0)
            for selection in selection_set.selections:
                if isinstance(selection, FieldNode):
                    key = selection.alias.value if selection.alias else selection.name.value
                    fields.setdefault(key, []).append(selection)
                elif isinstance(selection, InlineFragmentNode):
                    pending.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    if name not in seen and name in self.fragments:
                        seen.add(name)
                        pending.append(self.fragments[name].selection_set)
        return fields

    def page_size(self, node: FieldNode) -> int:
        for wanted in ("first", "last"):
            for arg in node.arguments or ():
                if arg.name.value != wanted:
                    continue
                value: Any = None
                if isinstance(arg.value, IntValueNode):
                    value = int(arg.value.value)
                elif isinstance(arg.value, VariableNode):
                    value = self.variables.get(arg.value.name.value)
                if isinstance(value, int) and not isinstance(value, bool):
                    return max(value, 1)
        return DEFAULT_PAGE_SIZE

    def walk(
        self,
        selection_sets: list[SelectionSetNode],
        parent: GraphQLObjectType,
        multiplier: int,
        depth: int,
        root: bool,
    ) -> None:
        for nodes in self.collect(selection_sets, parent).values():
            node = nodes[0]
            if depth > MAX_QUERY_DEPTH:
                raise _Exceeded(
                    GraphQLError(
                        f"maximum query depth exceeded {depth} > {MAX_QUERY_DEPTH}",
                        nodes=[node],
                        extensions={"code": DEPTH_ERROR_CODE},
                    )
                )
            self.depth = max(self.depth, depth)
            if node.name.value in _META_FIELDS:
                continue  # introspection: bounded by the schema, costs no query
            field = parent.fields.get(node.name.value)
            if field is None:
                continue  # validated documents only: cannot happen
            named = get_named_type(field.type)
            if not isinstance(named, GraphQLObjectType):
                continue
            connection = named.name.endswith("Connection")
            entity = "id" in named.fields and not parent.name.endswith("Edge")
            if root or connection or entity:
                self.complexity += multiplier
                if self.complexity > MAX_QUERY_COMPLEXITY:
                    raise _Exceeded(
                        GraphQLError(
                            f"Query complexity exceeds the maximum of {MAX_QUERY_COMPLEXITY}"
                            " (the number of queries it would execute)",
                            nodes=[self.operation],
                            extensions={"code": COMPLEXITY_ERROR_CODE},
                        )
                    )
            children = [n.selection_set for n in nodes if n.selection_set]
            if children:
                rows = multiplier * self.page_size(node) if connection else multiplier
                self.walk(children, named, rows, depth + 1, False)


def check_limits(
    schema: GraphQLSchema,
    fragments: Mapping[str, FragmentDefinitionNode],
    operation: OperationDefinitionNode,
    variables: Mapping[str, Any],
) -> GraphQLError | None:
    """The error for an operation too deep or too complex; None when it is within limits."""
    root = {
        OperationType.QUERY: schema.query_type,
        OperationType.MUTATION: schema.mutation_type,
        OperationType.SUBSCRIPTION: schema.subscription_type,
    }.get(operation.operation)
    if root is None:
        return None
    try:
        _Walk(schema, fragments, variables, operation).walk(
            [operation.selection_set], root, 1, 1, True
        )
    except _Exceeded as exc:
        return exc.error
    return None
