"""Shared fixtures: a real broker, per-test names, real stream-app processes."""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.procs",
    "tests.fixtures.fluent",
    "tests.fixtures.s3",
]
