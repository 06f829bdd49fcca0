"""``POST /graphql`` as Fluent answers it: parse, validate against :mod:`.schema`, check
:mod:`.limits`, then execute with graphql-core (resolvers in :mod:`.resolvers`).

A document that does not parse, does not validate or exceeds a limit gets
``{"errors": [{"message", "locations", ...}]}`` and no ``data``; nothing runs. Otherwise
only the fields asked for come back (aliases, fragments, inline literal arguments and
``$variables`` all work) and a field that fails is null with its error in ``errors[]``
(``path`` and ``locations``). The fields of a mutation run in document order.

One deliberate difference from a GraphQL server: when a mutation's variables do not fit
their declared types (say ``$i2: CreateOrderInput`` has ``items: null``), only the fields
using those variables fail, each with the coercion error and its ``path``; the others still
run. Fluent (graphql-java) would refuse the whole request. The simulator keeps the
per-order failure the client's multi-order ``createOrder`` handling is tested against.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    Visitor,
    execute_sync,
    parse,
    validate,
    visit,
)
from graphql.language import Node

from stream_app.fluent.simulator.limits import check_limits
from stream_app.fluent.simulator.resolvers import resolve_field
from stream_app.fluent.simulator.schema import fluent_schema
from stream_app.fluent.simulator.state import SimulatorState

Body = dict[str, Any]


def run_graphql(
    state: SimulatorState,
    query: str,
    variables: Mapping[str, Any] | None = None,
    operation_name: str | None = None,
) -> Body:
    """The response body of one GraphQL request (always sent with HTTP 200)."""
    schema = fluent_schema()
    variables = dict(variables or {})
    document, refused = _checked(query)
    if document is None:
        return {"errors": [dict(e) for e in refused]}
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    operation = _operation(document, operation_name)
    if operation is not None:
        too_much = check_limits(schema, fragments, operation, variables)
        if too_much is not None:
            return {"errors": [too_much.formatted]}
    result = _execute(state, document, variables, operation_name)
    if result.data is None and operation is not None and _is_mutation(operation):
        apart = _execute_fields_apart(state, operation, list(fragments.values()), variables)
        if apart is not None:
            return apart
    return _body(result)


@lru_cache(maxsize=512)
def _checked(query: str) -> tuple[DocumentNode | None, tuple[dict[str, Any], ...]]:
    """``query`` parsed and validated against the schema, or its errors. Kept per document
    text: a client sends the same few documents with other variables (the release's
    50-order ``createOrder`` document every time), and parsing and validating it again
    made the simulator, not the worker, the slowest part of the release benchmark (5x).
    Execution never changes a document."""
    try:
        document = parse(query)
    except GraphQLError as exc:
        return None, (dict(exc.formatted),)
    except RecursionError:
        return None, ({"message": "Syntax Error: the document is nested too deeply"},)
    try:
        problems = validate(fluent_schema(), document)
    except RecursionError:
        return None, ({"message": "Validation error: the document is nested too deeply"},)
    if problems:
        return None, tuple(dict(e.formatted) for e in problems)
    return document, ()


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name and o.name.value == name), None)


def _is_mutation(operation: OperationDefinitionNode) -> bool:
    return operation.operation == OperationType.MUTATION


def _execute(
    state: SimulatorState,
    document: DocumentNode,
    variables: Mapping[str, Any],
    operation_name: str | None,
) -> ExecutionResult:
    return execute_sync(
        fluent_schema(),
        document,
        context_value=state,
        variable_values=dict(variables),
        operation_name=operation_name,
        field_resolver=resolve_field,
    )


def _body(result: ExecutionResult) -> Body:
    body: Body = {}
    if result.data is not None or not result.errors:
        body["data"] = result.data
    if result.errors:
        body["errors"] = [e.formatted for e in result.errors]
    return body


class _VariablesUsed(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.variables: set[str] = set()
        self.fragments: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.variables.add(node.name.value)

    def enter_fragment_spread(self, node: FragmentSpreadNode, *_: Any) -> None:
        self.fragments.add(node.name.value)


def _variables_used(field: FieldNode, fragments: Mapping[str, FragmentDefinitionNode]) -> set[str]:
    used = _VariablesUsed()
    todo: list[Node] = [field]
    done: set[str] = set()
    while todo:
        visit(todo.pop(), used)
        for name in used.fragments - done:
            done.add(name)
            if name in fragments:
                todo.append(fragments[name])
    return used.variables


def _execute_fields_apart(
    state: SimulatorState,
    operation: OperationDefinitionNode,
    fragments: list[FragmentDefinitionNode],
    variables: Mapping[str, Any],
) -> Body | None:
    """Each root field of a mutation on its own, with only the variables it uses: a field
    whose variables do not coerce is null with that error (and its ``path``). None when
    the mutation's root selections are not all plain fields."""
    fields = operation.selection_set.selections
    if not all(isinstance(f, FieldNode) for f in fields):
        return None
    by_name = {f.name.value: f for f in fragments}
    data: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for field in fields:
        assert isinstance(field, FieldNode)  # checked above
        key = field.alias.value if field.alias else field.name.value
        used = _variables_used(field, by_name)
        alone = OperationDefinitionNode(
            operation=operation.operation,
            name=operation.name,
            variable_definitions=tuple(
                v for v in operation.variable_definitions or () if v.variable.name.value in used
            ),
            directives=operation.directives,
            selection_set=SelectionSetNode(selections=(field,)),
        )
        result = _execute(state, DocumentNode(definitions=(alone, *fragments)), variables, None)
        if result.data is None:
            data[key] = None
            errors.extend({**e.formatted, "path": [key]} for e in result.errors or ())
        else:
            data.update(result.data)
            errors.extend(dict(e.formatted) for e in result.errors or ())
    return {"data": data, "errors": errors} if errors else {"data": data}
