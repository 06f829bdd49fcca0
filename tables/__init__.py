"""Table definitions and the storage layer: per-key entries over Faust's RocksDB stores
(:mod:`.keyed`), the reservation books' store and order results (:mod:`.reservations`),
the release run reports (:mod:`.releases`).

May import :mod:`stream_app` (domain, broker, settings); never :mod:`agents` or the web
views.
"""
