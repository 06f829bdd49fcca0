"""Channel connectors: upstreams that cannot publish to Kafka, pulled into
``inventory-changes`` (SPEC section 6).

Owns the pure parts (a channel's field mapping, the channels file, CSV rows from a byte
stream, a file's chunks cut into envelopes — also the set-up of the process that runs
that step) and the I/O clients (S3, REST). Imports ``stream_app.records`` and the standard
libraries only; the flow that runs them (one poller per channel across the workers, their
progress in a table) is :mod:`agents.channels`.
"""
