"""The Event API payload (``POST /api/v4.1/event/async`` and ``/event/sync``, fact sheet
section 5): which fields are required and what type each field has.

Required: ``name`` (the ruleset), ``retailerId``, ``entityType`` and ``entityRef``.
Optional: ``entityId``, ``entitySubtype``, ``rootEntityType``, ``rootEntityRef``,
``rootEntityId``, ``type``, ``accountId``, ``source``, ``attributes`` (a free-form object,
or a list of ``{name, type, value}``) and ``meta`` (an object). Other keys are kept as sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REQUIRED_EVENT_FIELDS = ("name", "retailerId", "entityType", "entityRef")
_STRING_FIELDS = (
    "name",
    "entityType",
    "entityRef",
    "entitySubtype",
    "rootEntityType",
    "rootEntityRef",
    "type",
    "accountId",
    "source",
)
_ID_FIELDS = ("retailerId", "entityId", "rootEntityId")  # a string or an integer


def event_problems(body: Any) -> list[str]:
    """Everything wrong with an event payload, one message each (empty: it is valid)."""
    if not isinstance(body, Mapping):
        return ["the request body must be an event object"]
    problems = [
        f"'{key}' is required"
        for key in REQUIRED_EVENT_FIELDS
        if body.get(key) is None or (isinstance(body.get(key), str) and not body[key].strip())
    ]
    for key in _STRING_FIELDS:
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"'{key}' must be a string")
    for key in _ID_FIELDS:
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            problems.append(f"'{key}' must be a string or an integer")
    attributes = body.get("attributes")
    if attributes is not None and not isinstance(attributes, dict | list):
        problems.append("'attributes' must be an object or a list")
    meta = body.get("meta")
    if meta is not None and not isinstance(meta, dict):
        problems.append("'meta' must be an object")
    return problems
