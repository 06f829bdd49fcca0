"""A local Fluent Commerce simulator: a real aiohttp server with the Fluent endpoints we use.

The package owns an in-memory Fluent (tokens, jobs, batches, inventory positions, orders,
events) behind the same URLs, payloads and error bodies as Fluent (see the Fluent fact
sheet), plus ``/_sim/`` endpoints to inspect that state and inject faults. Where Fluent's
behaviour is undocumented the choice made here is noted beside the code.

- :mod:`.state`: the in-memory Fluent (:class:`SimulatorState`) and its clock and config;
- :mod:`.faults`: fault objects and which call meets which fault;
- :mod:`.events`: the Event API payload rules;
- :mod:`.schema`: the GraphQL SDL (the subset of Fluent's schema the product touches);
- :mod:`.resolvers`, :mod:`.limits`, :mod:`.graphql`: GraphQL executed with graphql-core,
  validated and limited (depth, complexity) as Fluent does;
- :mod:`.http`: routes, middleware, the app factory and the server.

Deterministic by design: time comes from an injected clock (epoch seconds), batches
advance PENDING -> RUNNING -> COMPLETE on status polls, faults follow the same clock.
"""

from stream_app.fluent.simulator.common import (
    API_PREFIX,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PAGE_SIZE,
    DEFAULT_PASSWORD,
    DEFAULT_RETAILER_ID,
    DEFAULT_USERNAME,
    MAX_BATCH_ENTITIES,
    MAX_GRAPHQL_BYTES,
    MAX_PAGE_SIZE,
    UNAUTHORIZED_MESSAGE,
    ApiError,
    iso,
)
from stream_app.fluent.simulator.faults import RECORD_ERROR_MESSAGES, Fault
from stream_app.fluent.simulator.graphql import run_graphql
from stream_app.fluent.simulator.http import (
    STATE_KEY,
    SimulatorServer,
    create_simulator_app,
    serve_simulator,
    start_simulator,
)
from stream_app.fluent.simulator.limits import (
    COMPLEXITY_ERROR_CODE,
    MAX_QUERY_COMPLEXITY,
    MAX_QUERY_DEPTH,
)
from stream_app.fluent.simulator.schema import FLUENT_SDL, fluent_schema
from stream_app.fluent.simulator.state import (
    Batch,
    InventoryRow,
    Job,
    SimClock,
    SimulatorConfig,
    SimulatorState,
)

__all__ = [
    "API_PREFIX",
    "COMPLEXITY_ERROR_CODE",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PASSWORD",
    "DEFAULT_RETAILER_ID",
    "DEFAULT_USERNAME",
    "FLUENT_SDL",
    "MAX_BATCH_ENTITIES",
    "MAX_GRAPHQL_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_QUERY_COMPLEXITY",
    "MAX_QUERY_DEPTH",
    "RECORD_ERROR_MESSAGES",
    "STATE_KEY",
    "UNAUTHORIZED_MESSAGE",
    "ApiError",
    "Batch",
    "Fault",
    "InventoryRow",
    "Job",
    "SimClock",
    "SimulatorConfig",
    "SimulatorServer",
    "SimulatorState",
    "create_simulator_app",
    "fluent_schema",
    "iso",
    "run_graphql",
    "serve_simulator",
    "start_simulator",
]
